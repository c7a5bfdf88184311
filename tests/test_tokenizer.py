"""Tokenizer: byte-level BPE and character level, HF file formats, parity with transformers."""

import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "All: Speak, speak.\tYou are all resolved rather to die than to famish?\n",
    "Ünïcödé tëxt, 日本語のテキスト, emoji 😀🎉 and numbers 12345.\r\n",
] * 20

VARIED = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n",
    "The quick brown fox <|endoftext|> jumps",
    "Ünïcödé 日本語 😀🎉 e\u0301 \u200d zero-width",
    "\x00 NUL and control \x07 chars",
    "don't won't it's 'quoted' \"double\"",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char(CORPUS, special_tokens=("<|endoftext|>",))


# ---- byte-level BPE -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text())
@example(text="emoji 😀👩‍👩‍👧 and flags 🇫🇷")
@example(text="combining e\u0301 a\u0308\u0323")
@example(text="windows\r\nlines\r\n")
@example(text="nul\x00byte")
def test_bpe_round_trips_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_special_tokens_follow_gpt2(bpe):
    assert bpe.kind == "bpe"
    assert bpe.bos_token == bpe.eos_token == "<|endoftext|>"
    assert bpe.bos_token_id == bpe.eos_token_id == 0
    assert bpe.pad_token_id is None and bpe.unk_token_id is None
    assert len(bpe) == bpe.vocab_size <= 400
    ids = bpe.encode("hello<|endoftext|>", add_bos=True, add_eos=True)
    assert ids[0] == ids[-1] == 0 and ids.count(0) == 3
    assert bpe.decode(ids, skip_special_tokens=True) == "hello"
    assert bpe.id_to_token(0) == "<|endoftext|>" and bpe.token_to_id("<|endoftext|>") == 0


def test_bpe_trains_from_files_like_from_texts(tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text("".join(CORPUS[:40]), encoding="utf-8")
    files[1].write_text("".join(CORPUS[40:]), encoding="utf-8")
    lines = [line for text in CORPUS for line in text.splitlines(keepends=True)]
    from_texts = Tokenizer.train_bpe(lines, vocab_size=400)
    assert Tokenizer.train_bpe(files, vocab_size=400).backend.get_vocab() == from_texts.backend.get_vocab()
    assert Tokenizer.train_bpe([str(f) for f in files], vocab_size=400).backend.get_vocab() == \
        from_texts.backend.get_vocab()


def test_bpe_bad_training_input(tmp_path):
    with pytest.raises(LmforgeError, match="vocab_size=100"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(LmforgeError, match="latin1.txt is not UTF-8"):
        Tokenizer.train_bpe([tmp_path / "latin1.txt"], vocab_size=300)
    with pytest.raises(LmforgeError, match="missing.txt does not exist"):
        Tokenizer.train_bpe([tmp_path / "missing.txt"], vocab_size=300)


# ---- character level ---------------------------------------------------------------------------


def test_char_ids_are_sorted_like_nanogpt(char):
    text = "".join(CORPUS)
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    assert char.kind == "char"
    assert char.encode(text) == [stoi[ch] for ch in text]
    assert char.token_to_id("\t") == 0 and char.token_to_id("\n") == 1
    assert char.token_to_id("<|endoftext|>") == len(stoi) == char.vocab_size - 1
    assert char.eos_token_id == len(stoi)


@given(text=st.text(alphabet=sorted(set("".join(CORPUS)))))
@example(text=" \n\t  \r\n spaced  out \n")
def test_char_round_trips_its_alphabet(char, text):
    ids = char.encode(text)
    assert len(ids) == len(text)
    assert char.decode(ids) == text


def test_char_unknown_character_is_named(char):
    with pytest.raises(LmforgeError, match=r"character '€' at position 17 "):
        char.encode("<|endoftext|>abcd€")
    with pytest.raises(LmforgeError, match=r"'\\x07' at position 1 of text 1 in the batch"):
        char.encode_batch(["abc", "a\x07"])


def test_char_unk_token_maps_unknown_characters():
    tok = Tokenizer.train_char(["abc"], unk_token="<unk>")
    assert tok.unk_token_id == 3 and tok.vocab_size == 4
    assert tok.encode("a€c") == [0, 3, 2]
    assert tok.encode_batch(["cab", "z"]) == [[2, 0, 1], [3]]


def test_char_saves_and_loads_everywhere(char, tmp_path):
    char.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.kind == "char" and again.eos_token == "<|endoftext|>"
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ["First Citizen:\n\tspeak, speak.  ", "a<|endoftext|>b"]:
        ids = char.encode(text)
        assert again.encode(text) == hf(text)["input_ids"] == ids
        assert hf.decode(ids) == char.decode(ids) == text


# ---- Hugging Face files ------------------------------------------------------------------------


def test_gpt2_vocab_merges_match_transformers(bpe, tmp_path):
    bpe.backend.model.save(str(tmp_path))
    ours = Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert Tokenizer.from_pretrained(tmp_path).backend.to_str() == ours.backend.to_str()
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    assert ours.eos_token_id == hf.eos_token_id == 0
    batch = ours.encode_batch(VARIED)
    assert batch == [hf(text)["input_ids"] for text in VARIED] == bpe.encode_batch(VARIED)
    assert ours.decode_batch(batch) == hf.batch_decode(batch) == VARIED


def test_saved_folder_loads_in_transformers(bpe, tmp_path):
    bpe.save(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert auto.eos_token == bpe.eos_token
    for text in VARIED:
        ids = bpe.encode(text)
        assert auto(text)["input_ids"] == fast(text)["input_ids"] == ids
        assert auto.decode(ids) == text


def test_save_from_pretrained_round_trip(bpe, tmp_path):
    bpe.model_max_length = 128
    try:
        bpe.save(tmp_path / "model")
    finally:
        bpe.model_max_length = None
    again = Tokenizer.from_pretrained(tmp_path / "model")
    assert again.to_json_str() == bpe.to_json_str()
    assert (again.bos_token, again.eos_token, again.pad_token, again.unk_token) == \
        (bpe.bos_token, bpe.eos_token, None, None)
    assert again.model_max_length == 128
    assert again.encode_batch(VARIED) == bpe.encode_batch(VARIED)
    assert Tokenizer.from_file(tmp_path / "model" / "tokenizer.json").eos_token_id == 0


def _write_config(folder: Path, **tokens) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(tokens), encoding="utf-8")


def test_t5_style_unigram_folder(tmp_path):
    backend = Backend(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    _write_config(tmp_path, tokenizer_class="PreTrainedTokenizerFast", eos_token="</s>", model_max_length=512)
    special_map = {"pad_token": {"content": "<pad>", "lstrip": False, "special": True}, "unk_token": "<unk>"}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.kind == "unigram"
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    assert tok.model_max_length == 512
    text = "The quick brown fox speaks."
    ids = tok.encode(text, add_eos=True)
    assert ids == transformers.AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"]
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id in tok.encode("\u2603")


def test_bart_style_bpe_folder(tmp_path):
    Tokenizer.train_bpe(CORPUS, vocab_size=300, special_tokens=("<s>", "<pad>", "</s>", "<unk>")).save(tmp_path)
    _write_config(tmp_path, bos_token={"__type": "AddedToken", "content": "<s>"}, eos_token="</s>", pad_token="<pad>",
                  unk_token="<unk>")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.kind == "bpe"
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok.encode("Speak, speak.", add_bos=True, add_eos=True)
    assert ids[0] == 0 and ids[-1] == 2 and tok.decode(ids) == "<s>Speak, speak.</s>"


# ---- user mistakes -------------------------------------------------------------------------------


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(LmforgeError, match="nowhere does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(LmforgeError, match=r"no tokenizer found in .*tokenizer\.json.*vocab\.json.*merges\.txt"):
        Tokenizer.from_pretrained(tmp_path)


def test_corrupt_files_are_named(bpe, tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(LmforgeError, match="tokenizer.json is not a valid tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(LmforgeError, match="tokenizer.json is not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    bpe.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    _write_config(tmp_path, eos_token="</s>")
    with pytest.raises(LmforgeError, match="eos token '</s>' is not in this tokenizer's vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text("[1, 2")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(LmforgeError, match="vocab.json is not valid JSON"):
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_missing_special_tokens_and_bad_ids():
    tok = Tokenizer.train_char(["abc"])
    with pytest.raises(LmforgeError, match="no bos token"):
        tok.encode("a", add_bos=True)
    with pytest.raises(LmforgeError, match="token id 7 is outside"):
        tok.decode([0, 7])
