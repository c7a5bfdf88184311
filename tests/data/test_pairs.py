"""Pair data: formats, fields, templates, named data sets, length limits, batching, and the bad inputs."""

import json
import random

import pytest

from lmforge.data.pairs import LengthReport, PairEncoder, length_batches, load_pairs
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

RECORDS = [
    {"id": "1", "dialogue": "Amanda: I baked cookies.\r\nJerry: Sure!", "summary": "Amanda baked cookies. "},
    {"id": "2", "dialogue": "Tom: Are you coming?\nAnna: Yes", "summary": "Anna is coming."},
    {"id": "3", "dialogue": "", "summary": "problem with visualization of the content"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["Amanda baked cookies and Jerry wants some.", "Tom asks whether Anna is coming; she is."] * 5
    return Tokenizer.train_bpe(texts, vocab_size=300, special_tokens=("<pad>", "</s>", "<s>"))


def test_jsonl_fields_normalised_and_empty_source_dropped_with_a_note(tmp_path):
    pairs = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", RECORDS)), source_field="dialogue",
                       target_field="summary")
    assert pairs.ids == ["1", "2"]
    assert pairs.sources[0] == "Amanda: I baked cookies.\nJerry: Sure!"  # CRLF -> LF
    assert pairs.targets[0] == "Amanda baked cookies."  # trailing space stripped
    assert len(pairs.notes) == 1 and "empty source 'dialogue'" in pairs.notes[0] and "id 3" in pairs.notes[0]


def test_templates_and_prefix(tmp_path):
    pairs = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", RECORDS[:2])), source_field="dialogue",
                       target_field="summary")
    assert pairs.prompts("summarize: {dialogue}")[1] == "summarize: Tom: Are you coming?\nAnna: Yes"
    assert pairs.prompts(None, prefix="summarize: ")[1].startswith("summarize: Tom:")
    assert pairs.prompts("{{literal}} {id}: {dialogue}")[0].startswith("{literal} 1: Amanda")
    with pytest.raises(LmforgeError, match=r"names the field 'dialog'.*fields are: id, dialogue, summary"):
        pairs.prompts("summarize: {dialog}")


def test_csv_and_tsv(tmp_path):
    (tmp_path / "d.csv").write_text('src,tgt\n"a, b",c\nd,e\n', encoding="utf-8")
    (tmp_path / "d.tsv").write_text("src\ttgt\na, b\tc\n", encoding="utf-8")
    csv_pairs = load_pairs(str(tmp_path / "d.csv"), source_field="src", target_field="tgt")
    tsv_pairs = load_pairs(str(tmp_path / "d.tsv"), source_field="src", target_field="tgt")
    assert csv_pairs.sources == ["a, b", "d"] and csv_pairs.targets == ["c", "e"]
    assert tsv_pairs.sources == ["a, b"] and tsv_pairs.targets == ["c"]


def test_parallel_files_have_language_fields(tmp_path):
    (tmp_path / "t.en").write_text("A dog runs.\nTwo cats.\n", encoding="utf-8")
    (tmp_path / "t.de").write_text("Ein Hund rennt.\nZwei Katzen.\n", encoding="utf-8")
    pairs = load_pairs(f"{tmp_path / 't.en'},{tmp_path / 't.de'}")
    assert pairs.sources == ["A dog runs.", "Two cats."] and pairs.targets[1] == "Zwei Katzen."
    assert pairs.prompts("translate English to German: {en}")[0] == "translate English to German: A dog runs."


def test_bad_inputs_are_one_sentence_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS[:2])
    with pytest.raises(LmforgeError, match=r"no source field 'text'; its fields are: id, dialogue, summary"):
        load_pairs(str(path), source_field="text", target_field="summary")
    empty_target = write_jsonl(tmp_path / "e.jsonl", [{"s": "hello", "t": "  "}])
    with pytest.raises(LmforgeError, match=r"line 1 \(id 0\) has an empty target 't'"):
        load_pairs(str(empty_target), source_field="s", target_field="t")
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"a.en has 3 lines but .*a.de has 2"):
        load_pairs(f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}")
    (tmp_path / "bad.jsonl").write_text('{"s": "x", "t": "y"}\nnot json\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match="line 2 is not valid JSON"):
        load_pairs(str(tmp_path / "bad.jsonl"), source_field="s", target_field="t")
    with pytest.raises(LmforgeError, match="suffix"):
        load_pairs(str(tmp_path / "a.en"))


def test_named_data_sets_come_from_lmforge_data(tmp_path, monkeypatch):
    monkeypatch.delenv("LMFORGE_DATA", raising=False)
    with pytest.raises(LmforgeError, match=r"\$LMFORGE_DATA"):
        load_pairs("samsum")
    (tmp_path / "samsum").mkdir()
    write_jsonl(tmp_path / "samsum" / "validation.jsonl", RECORDS)
    monkeypatch.setenv("LMFORGE_DATA", str(tmp_path))
    pairs = load_pairs("samsum:val")
    assert pairs.description == "samsum:validation" and pairs.source_field == "dialogue" and len(pairs) == 2
    with pytest.raises(LmforgeError, match="held back"):
        load_pairs("samsum:test")
    with pytest.raises(LmforgeError, match="no split 'dev2'"):
        load_pairs("samsum:dev2")


def test_encoder_truncates_drops_or_refuses_and_counts(tokenizer):
    prompts, targets, ids = ["Amanda baked cookies and Jerry wants some."] * 2, ["Anna is coming."] * 2, ["a", "b"]
    enc = PairEncoder(tokenizer, True, "t5", max_source_length=5, max_target_length=40, too_long="truncate")
    pairs, report = enc.encode(prompts, targets, ids, "toy")
    assert all(len(s) == 5 and s[-1] == tokenizer.eos_token_id for s, _ in pairs)
    assert report.truncated == {"source": 2, "target": 0}
    assert report.notes("toy") == ["toy: truncated 2 source(s) longer than 5 tokens"]
    drop = PairEncoder(tokenizer, True, "t5", 5, 40, too_long="drop")
    with pytest.raises(LmforgeError, match="no example of toy is within the length limits"):
        drop.encode(prompts, targets, ids, "toy")
    strict = PairEncoder(tokenizer, True, "t5", 5, 40, too_long="error")
    with pytest.raises(LmforgeError, match=r"source of example a is \d+ tokens, longer than max_source_length \(5\)"):
        strict.encode(prompts, targets, ids, "toy")


def test_bart_gets_bos_and_t5_does_not(tokenizer):
    report = LengthReport()
    t5 = PairEncoder(tokenizer, True, "t5", 64, 64).sources(["Anna"], ["x"], report)[0]
    bart = PairEncoder(tokenizer, True, "bart", 64, 64).sources(["Anna"], ["x"], report)[0]
    assert t5[0] != tokenizer.bos_token_id and bart[0] == tokenizer.bos_token_id
    assert t5[-1] == bart[-1] == tokenizer.eos_token_id


def test_collate_seq2seq_pads_labels_with_minus_100(tokenizer):
    enc = PairEncoder(tokenizer, True, "t5", 64, 64)
    batch = enc.collate([([5, 6, 1], [7, 1]), ([5, 1], [7, 8, 9, 1])])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, -100, -100], [7, 8, 9, 1]]


def test_collate_decoder_only_masks_the_prompt(tokenizer):
    enc = PairEncoder(tokenizer, False, "gpt2", 64, 64)
    pairs, _ = enc.encode(["Tom asks"], ["Anna"], ["a"], "toy")
    assert tokenizer.decode(pairs[0][1][:-1]) == " Anna"  # the completion follows the prompt after a space
    prompt, target = pairs[0]
    assert prompt[0] == tokenizer.bos_token_id and target[-1] == tokenizer.eos_token_id
    batch = enc.collate(pairs + [([2, 5], [6, 1])])
    row, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert row == prompt + target[:-1]
    assert labels == [-100] * (len(prompt) - 1) + target  # only the completion (and its EOS) is predicted
    assert batch["labels"][1].tolist()[:len(row)] == [-100, 6, 1] + [-100] * (len(row) - 3)


def test_length_batches_cover_everything_within_the_budget():
    rng = random.Random(0)
    lengths = [(rng.randint(3, 60), rng.randint(2, 20)) for _ in range(300)]
    batches = length_batches(lengths, batch_tokens=400, max_batch_size=16, rng=random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) <= 16
        assert len(b) * (max(lengths[i][0] for i in b) + max(lengths[i][1] for i in b)) <= 400
    assert length_batches(lengths, 400, 16, None) == length_batches(lengths, 400, 16, None)


def test_real_samsum_and_multi30k(shared_data, monkeypatch):
    monkeypatch.setenv("LMFORGE_DATA", str(shared_data))
    train = load_pairs("samsum:train")
    assert len(train) == 14731 and "13828807" not in train.ids
    assert train.notes == ["dropped 1 example(s) of samsum:train with an empty source 'dialogue' (id 13828807)"]
    assert len(load_pairs("samsum", split="validation")) == 818
    val = load_pairs("multi30k:val")
    assert len(val) == 1014 and val.targets[0] and val.source_field == "en" and val.target_field == "de"
