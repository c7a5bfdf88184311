"""Preference data: the record forms, HH-RLHF transcripts, rankings, identical pairs, length limits, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmforge.data.preferences import PreferenceEncoder, load_preferences, split_transcript
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["abcdefghijklmnopqrstuvwxyz :?.\n"], special_tokens=("<pad>", "</s>", "<s>"))


def test_split_transcript_at_first_assistant_after_last_human():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this\n\nAssistant: and that"
    prompt, response = split_transcript(text)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert response == " like this\n\nAssistant: and that"
    assert split_transcript("no turns here") is None


def test_record_forms_rankings_and_identical_pairs(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "margin": 2},
        {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"},
        {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"},
        {"prompt": "Q3", "responses": ["a", "b", "c", "d"]},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more?"},
    ])
    prefs = load_preferences(str(path))
    assert len(prefs) == 1 + 1 + 6  # the identical pair is dropped, a ranking of 4 gives 6 pairs
    assert prefs.notes and "1 pair(s)" in prefs.notes[0] and "do not split into one prompt" in prefs.notes[1]
    first, hh = prefs.pairs[0], prefs.pairs[1]
    assert (first.prompt, first.chosen, first.rejected, first.margin, first.weight) == ("Q1", "good", "bad", 2.0, 1.0)
    assert (hh.prompt, hh.chosen, hh.rejected) == ("\n\nHuman: q\n\nAssistant:", " yes", " no")
    ranked = prefs.pairs[2:]
    assert {(p.chosen, p.rejected) for p in ranked} == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"),
                                                        ("c", "d")}
    assert sum(p.weight for p in ranked) == pytest.approx(1.0)  # one prompt counts as one example


def test_several_files_joined_with_plus(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x", "chosen": "y", "rejected": "z"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "u", "chosen": "v", "rejected": "w"}] * 2)
    assert len(load_preferences(f"{a}+{b}")) == 3


def test_missing_fields_name_the_line_and_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "chosen": "y", "rejected": "z"},
                                              {"prompt": "x", "answer": "y"}])
    with pytest.raises(LmforgeError, match=r"line 2 lacks the field\(s\) chosen, rejected.*prompt, answer"):
        load_preferences(str(path))


def test_length_limits_truncate_from_the_left_drop_and_error():
    tok = char_tokenizer()
    pairs = load_pairs_inline([("abcdefghij", "xy", "xyz"), ("ab", "c", "d")])
    enc = PreferenceEncoder(tok, False, "gpt2", max_length=9, max_response_length=5, too_long="truncate")
    out, report = enc.encode(pairs)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    # the longer response is " xyz" + EOS = 5 tokens, so the prompt keeps BOS + its last 3 characters
    assert out[0].prompt == [bos] + tok.encode("hij")
    assert out[0].chosen == tok.encode(" xy") + [eos] and out[0].rejected == tok.encode(" xyz") + [eos]
    assert out[1].prompt == [bos] + tok.encode("ab")
    assert (report.truncated_prompts, report.truncated_responses, report.dropped) == (1, 0, 0)
    assert "cut the start of 1 prompt(s)" in report.notes("d", 9, 5)[0]

    dropped, report = PreferenceEncoder(tok, False, "gpt2", 9, 5, too_long="drop").encode(pairs)
    assert len(dropped) == 1 and report.dropped == 1
    with pytest.raises(LmforgeError, match="longer than max_length"):
        PreferenceEncoder(tok, False, "gpt2", 9, 5, too_long="error").encode(pairs)


def test_encoder_decoder_layout():
    tok = char_tokenizer()
    pairs = load_pairs_inline([("abc", "x", "yz")])
    out, _ = PreferenceEncoder(tok, True, "t5", max_length=16, max_response_length=8).encode(pairs)
    eos = tok.eos_token_id
    assert out[0].prompt == tok.encode("abc") + [eos]  # T5: no BOS, EOS ends the source
    assert out[0].chosen == tok.encode("x") + [eos] and out[0].rejected == tok.encode("yz") + [eos]


def load_pairs_inline(rows):
    from lmforge.data.preferences import PreferencePair

    return [PreferencePair(p, c, r, id=str(i)) for i, (p, c, r) in enumerate(rows)]


HH_DATA = Path(os.environ.get("LMFORGE_DATA", "/nonexistent"))


@pytest.mark.skipif(not (HH_DATA / "hh-rlhf-helpful-base" / "test.jsonl").is_file(),
                    reason="LMFORGE_DATA does not hold hh-rlhf-helpful-base/test.jsonl")
def test_named_hh_rlhf_sets():
    base = load_preferences("hh-rlhf-helpful-base:test")
    assert len(base) == 2354 - 2  # the README's two identical records are dropped
    assert all(p.prompt.endswith("\n\nAssistant:") for p in base.pairs)
    with pytest.raises(LmforgeError, match="hh-rlhf-helpful-base:test"):
        load_preferences("hh-rlhf-helpful-base")  # train is not there; the error names what is
