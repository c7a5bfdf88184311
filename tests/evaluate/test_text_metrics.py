import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lmforge.errors import LmforgeError
from lmforge.evaluate.text_metrics import (
    bleu,
    chrf,
    distinct_n,
    novelty_vs_source,
    repetition_rate,
    rouge,
    split_sentences,
)

HYPS = ["the cat sat on the mat", "a quick brown fox jumps over the dog", "hello there world"]
REFS = ["the cat is sitting on the mat", "the quick brown fox jumped over the lazy dog", "hello world"]
REFS_B = ["a cat sat on a mat", "a fast brown fox leaps over the dog", "hi there world"]


def test_bleu_is_sacrebleu_corpus_bleu():
    expected = sacrebleu.corpus_bleu(HYPS, [REFS])
    got = bleu(HYPS, REFS)
    assert got["score"] == pytest.approx(expected.score)
    assert got["precisions"] == pytest.approx(expected.precisions)
    assert (got["bp"], got["sys_len"], got["ref_len"]) == (expected.bp, expected.sys_len, expected.ref_len)
    assert "tok:13a" in got["signature"]
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)) / len(HYPS)
    assert got["score"] != pytest.approx(sentence_mean)


def test_bleu_several_references_and_tokenizer():
    per_hyp = [[a, b] for a, b in zip(REFS, REFS_B)]
    assert bleu(HYPS, per_hyp)["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS_B]).score)
    uneven = [[REFS[0]], [REFS[1], REFS_B[1]], [REFS[2]]]
    streams = [REFS, [None, REFS_B[1], None]]
    assert bleu(HYPS, uneven)["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score)
    got = bleu(HYPS, REFS, tokenize="char")
    assert got["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="char").score)
    assert "tok:char" in got["signature"]


def test_chrf_is_sacrebleu_corpus_chrf():
    got = chrf(HYPS, REFS)
    assert got["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "nc:6" in got["signature"]
    plus = chrf(HYPS, [[a, b] for a, b in zip(REFS, REFS_B)], word_order=2)
    assert plus["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, REFS_B], word_order=2).score)


def test_mismatched_lengths_raise():
    with pytest.raises(LmforgeError):
        bleu(HYPS, REFS[:2])
    with pytest.raises(LmforgeError):
        rouge([], [])


def test_rouge_is_mean_rouge_score_fmeasure():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(r, h) for h, r in zip(HYPS, REFS)]
    got = rouge(HYPS, REFS)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert got[key] == pytest.approx(100 * sum(s[key].fmeasure for s in scores) / len(scores))


def test_rouge_lsum_splits_sentences_when_there_are_no_newlines():
    pred, ref = "The cat sat. The dog ran away!", "The dog ran away. The cat sat."
    got = rouge([pred], [ref])
    assert got["rougeLsum"] == pytest.approx(100.0)
    assert got["rougeL"] < 100.0
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    expected = scorer.score("The dog ran away.\nThe cat sat.", "The cat sat.\nThe dog ran away!")
    assert got["rougeLsum"] == pytest.approx(100 * expected["rougeLsum"].fmeasure)


def test_rouge_keeps_existing_newlines():
    pred, ref = "one two. three four\nfive six", "three four\none two. five six"
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    assert rouge([pred], [ref])["rougeLsum"] == pytest.approx(100 * scorer.score(ref, pred)["rougeLsum"].fmeasure)


def test_rouge_several_references_takes_the_best():
    assert rouge(["the cat sat on the mat"], [["a dog ran", "the cat sat on the mat"]])["rouge1"] == 100.0


def test_split_sentences():
    assert split_sentences(" It rained. Did it?  Yes!\tSo 3.5 mm fell. ") == [
        "It rained.", "Did it?", "Yes!", "So 3.5 mm fell."]


def test_distinct_n_is_corpus_level():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
    assert distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(3 / 5)
    assert distinct_n(["a"], 2) == 0.0
    with pytest.raises(LmforgeError):
        distinct_n(texts, 0)


def test_repetition_rate():
    assert repetition_rate("a b a b a", n=2) == pytest.approx(0.5)  # ab ba [ab ba]
    assert repetition_rate([7, 7, 7, 7], n=1) == pytest.approx(0.75)
    assert repetition_rate("a b c d", n=3) == 0.0
    assert repetition_rate("a b", n=3) == 0.0


def test_novelty_vs_source():
    out, src = "the cat sat on the mat", "the cat lay on the mat"
    assert novelty_vs_source(out, src, 2) == pytest.approx(2 / 5)  # "cat sat", "sat on"
    assert novelty_vs_source(out, src, 1) == pytest.approx(1 / 6)
    assert novelty_vs_source(src.split(), src.split(), 3) == 0.0
    assert novelty_vs_source("the cat", src, 3) is None
