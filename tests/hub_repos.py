"""Tiny random models and small data sets stored under the lecture's Hub names, with the file lists and
tensor layouts of the real repositories (built locally with transformers and tokenizers; nothing downloaded).

    gpt2                                    model.safetensors without the `transformer.` prefix and with the
                                            `attn.bias` buffers, pytorch_model.bin beside it, tokenizer.json
                                            + vocab.json + merges.txt, other frameworks' weights
    facebook/opt-125m                       pytorch_model.bin only, `decoder.*` keys, vocab.json + merges.txt
    facebook/bart-large-cnn                 final_logits_bias, its summarization generation_config.json
    sdadas/flan-t5-base-translator-en-pl    spiece.model as well as tokenizer.json
    sharded/llama                           model.safetensors.index.json and two shards
    Abirate/english_quotes (data set)       quotes.jsonl with quote/author/tags
    knkarthick/samsum (data set)            train/validation/test CSV with id/dialogue/summary
    parquet/quotes (data set)               data/train-0000{0,1}-of-00002.parquet + data/validation-*.parquet
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.tokenizer import Tokenizer

TEXT = ("Once upon a time there was a quiet village by the sea. The fishermen went out every morning and came "
        "back with stories. Be yourself; everyone else is already taken. So many books, so little time. ") * 8
QUOTES = [("Be yourself; everyone else is already taken.", "Oscar Wilde", ["be-yourself", "inspirational"]),
          ("So many books, so little time.", "Frank Zappa", ["books", "humor"]),
          ("A room without books is like a body without a soul.", "Marcus Tullius Cicero", ["books", "soul"]),
          ("You only live once, but if you do it right, once is enough.", "Mae West", ["humor", "life"])] * 6
DIALOGUES = [("13818513", "Amanda: I baked cookies. Do you want some?\r\nJerry: Sure!\r\nAmanda: I'll bring you "
              "tomorrow :-)", "Amanda baked cookies and will bring Jerry some tomorrow."),
             ("13728867", "Olivia: Who are you voting for in this election?\r\nOliver: Liberals as always.\r\n"
              "Olivia: Me too!!\r\nOliver: Great", "Olivia and Olivier are voting for liberals in this election."),
             ("13681000", "Tim: Hi, what's up?\r\nKim: Bad mood tbh, I was going to do lots of chores.\r\nTim: "
              "What did you plan to do?\r\nKim: Oh, the house is a mess.", "Kim has a lot of chores to do.")] * 4
FRAMEWORK_FILES = {"tf_model.h5": b"\x89HDF\r\n", "flax_model.msgpack": b"\x80", "rust_model.ot": b"PK",
                   "README.md": b"---\nlicense: mit\n---\n# a tiny random stand-in\n"}


def bpe_files(folder: Path, specials: tuple[str, ...], vocab_size: int = 320) -> Tokenizer:
    """A byte-level BPE saved as tokenizer.json + tokenizer_config.json and as vocab.json + merges.txt."""
    tok = Tokenizer.train_bpe([TEXT], vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
    tok.save(folder)
    tok.backend.model.save(str(folder))
    return tok


def unigram_tokenizer(folder: Path) -> Tokenizer:
    """A T5-style SentencePiece unigram (<pad>=0, </s>=1, <unk>=2) as tokenizer.json."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = tokenizers.Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    backend.train_from_iterator([TEXT, "Dzień dobry, jak się masz? Wszystko w porządku."] * 4, trainer)
    tok = Tokenizer(backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.save(folder)
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>",
                                                                 "unk_token": "<unk>"}))
    return tok


def randomize(model) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)


def gpt2(folder: Path) -> Path:
    import transformers as tf
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tok = bpe_files(folder, ("<|endoftext|>",))
    eos = tok.eos_token_id
    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=tok.vocab_size,
                        bos_token_id=eos, eos_token_id=eos)
    model = tf.GPT2LMHeadModel(cfg).eval()
    randomize(model)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("lm_head")}
    for i in range(cfg.n_layer):  # the causal-mask buffers the original checkpoint carries
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(128, 128)).view(1, 1, 128, 128)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    torch.save(state, folder / "pytorch_model.bin")
    cfg.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": eos, "eos_token_id": eos}))
    for name, data in {**FRAMEWORK_FILES, "64.tflite": b"TFL3"}.items():
        (folder / name).write_bytes(data)
    return folder


def opt(folder: Path) -> Path:
    import transformers as tf

    folder.mkdir(parents=True)
    tok = bpe_files(folder, ("<s>", "<pad>", "</s>", "<unk>"))
    (folder / "tokenizer.json").unlink()  # the real repository has vocab.json + merges.txt only
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "</s>", "eos_token": "</s>",
                                                                 "pad_token": "<pad>", "unk_token": "</s>"}))
    cfg = tf.OPTConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, ffn_dim=64, word_embed_proj_dim=32,
                       max_position_embeddings=128, vocab_size=tok.vocab_size, bos_token_id=2, eos_token_id=2,
                       pad_token_id=1)
    torch.manual_seed(0)
    model = tf.OPTForCausalLM(cfg).eval()
    randomize(model)
    state = {k.removeprefix("model."): v for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    torch.save(state, folder / "pytorch_model.bin")
    cfg.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 2,
                                                                "pad_token_id": 1}))
    for name, data in FRAMEWORK_FILES.items():
        (folder / name).write_bytes(data)
    return folder


BART_CNN_GENERATION = {"bos_token_id": 0, "decoder_start_token_id": 2, "early_stopping": True, "eos_token_id": 2,
                       "forced_bos_token_id": 0, "forced_eos_token_id": 2, "length_penalty": 2.0, "max_length": 30,
                       "min_length": 8, "no_repeat_ngram_size": 3, "num_beams": 4, "pad_token_id": 1}


def bart(folder: Path) -> Path:
    """The summarizer's layout and generation config (beams, length penalty, minimum length, n-gram blocking;
    max/min length scaled down from 142/56 to fit the tiny model's 64 positions)."""
    import transformers as tf

    folder.mkdir(parents=True)
    tok = bpe_files(folder, ("<s>", "<pad>", "</s>", "<unk>", "<mask>"))
    cfg = tf.BartConfig(vocab_size=tok.vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
                        max_position_embeddings=1024, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
    torch.manual_seed(0)
    model = tf.BartForConditionalGeneration(cfg).eval()
    randomize(model)
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
        model.lm_head.weight.mul_(20)  # a sharper distribution, so beams and blocking matter
    model.generation_config = tf.GenerationConfig(**BART_CNN_GENERATION)
    model.save_pretrained(folder)
    for name, data in FRAMEWORK_FILES.items():
        (folder / name).write_bytes(data)
    return folder


def t5(folder: Path) -> Path:
    import transformers as tf

    folder.mkdir(parents=True)
    tok = unigram_tokenizer(folder)
    (folder / "spiece.model").write_bytes(b"\x0a\x0b<sentencepiece model of the real repository>")
    cfg = tf.T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                      num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(0)
    model = tf.T5ForConditionalGeneration(cfg).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(tok.vocab_size, 32))
    randomize(model)
    model.generation_config = tf.GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                                                  max_length=40)
    model.save_pretrained(folder)
    (folder / "README.md").write_bytes(FRAMEWORK_FILES["README.md"])
    return folder


def sharded_llama(folder: Path) -> Path:
    from hf_models import tiny_hf_model

    model = tiny_hf_model("llama")
    model.save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def quotes_jsonl() -> bytes:
    return "".join(json.dumps({"quote": q, "author": a, "tags": t}) + "\n" for q, a, t in QUOTES).encode()


def samsum_csv(rows=DIALOGUES) -> bytes:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "dialogue", "summary"])
    writer.writerows(rows)
    return out.getvalue().encode()


def parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=4)
    return sink.getvalue()


def build_all(root: Path) -> dict[str, Path]:
    """Every model folder, keyed by its Hub name."""
    return {"gpt2": gpt2(root / "gpt2"), "facebook/opt-125m": opt(root / "opt"),
            "facebook/bart-large-cnn": bart(root / "bart"),
            "sdadas/flan-t5-base-translator-en-pl": t5(root / "t5"), "sharded/llama": sharded_llama(root / "llama")}


def publish(hub, models: dict[str, Path]) -> None:
    """Put the models and data sets on a FakeHub under their names."""
    for name, folder in models.items():
        hub.add_folder(name, folder)
    hub.add("Abirate/english_quotes", {"quotes.jsonl": quotes_jsonl(), "README.md": b"---\nlicense: cc-by-4.0\n---\n"},
            repo_type="dataset")
    hub.add("knkarthick/samsum", {"train.csv": samsum_csv(), "validation.csv": samsum_csv(DIALOGUES[:3]),
                                  "test.csv": samsum_csv(DIALOGUES[:2]), "README.md": b"# SAMSum\n"},
            repo_type="dataset")
    rows = [{"quote": q, "author": a} for q, a, _ in QUOTES]
    hub.add("parquet/quotes", {"data/train-00000-of-00002.parquet": parquet_bytes(rows[:10]),
                               "data/train-00001-of-00002.parquet": parquet_bytes(rows[10:20]),
                               "data/validation-00000-of-00001.parquet": parquet_bytes(rows[20:])},
            repo_type="dataset")
