"""Text metrics on lists of strings: BLEU and chrF (sacrebleu), ROUGE (rouge-score), and n-gram
diversity and novelty measures on whitespace tokens or token-id lists."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from lmforge.errors import LmforgeError

References = Sequence[str] | Sequence[Sequence[str]]
Tokens = str | Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _per_hypothesis_references(hypotheses: Sequence[str], references: References) -> list[list[str]]:
    """One list of references per hypothesis, whether one or several were given for each."""
    if len(hypotheses) == 0:
        raise LmforgeError("there are no hypotheses to score; pass at least one output text")
    if len(references) != len(hypotheses):
        raise LmforgeError(f"got {len(hypotheses)} hypotheses but {len(references)} references; "
                           "pass one reference (or one list of references) per hypothesis")
    per_hyp = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(len(refs) == 0 for refs in per_hyp):
        raise LmforgeError("a hypothesis has an empty list of references; give each at least one")
    return per_hyp


def _reference_streams(hypotheses: Sequence[str], references: References) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot, padded with None where a hypothesis
    has fewer references than the most any has."""
    per_hyp = _per_hypothesis_references(hypotheses, references)
    width = max(len(refs) for refs in per_hyp)
    return [[refs[k] if k < len(refs) else None for refs in per_hyp] for k in range(width)]


def bleu(hypotheses: Sequence[str], references: References, tokenize: str | None = None) -> dict:
    """Corpus BLEU (sacrebleu): n-gram statistics are summed over all hypotheses before the
    precisions and brevity penalty are taken. `tokenize` is a sacrebleu tokenizer name
    ("13a" when None, "intl", "zh", "char", "none", ...)."""
    metric = BLEU() if tokenize is None else BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return {"score": result.score, "precisions": list(result.precisions), "bp": result.bp,
            "sys_len": result.sys_len, "ref_len": result.ref_len,
            "signature": metric.get_signature().format()}


def chrf(hypotheses: Sequence[str], references: References, word_order: int = 0) -> dict:
    """Corpus chrF2 (sacrebleu); word_order=2 gives chrF++."""
    metric = CHRF(word_order=word_order)
    result = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return {"score": result.score, "signature": metric.get_signature().format()}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Split at whitespace that follows '.', '!' or '?' — a crude stand-in for nltk.sent_tokenize
    (it also splits after abbreviations such as "e.g.") that needs no data download."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _newline_sentences(text: str) -> str:
    return text if "\n" in text else "\n".join(split_sentences(text))


def rouge(predictions: Sequence[str], references: References, use_stemmer: bool = True) -> dict:
    """ROUGE F-measures ×100, averaged over examples, as Hugging Face `evaluate` reports them.

    rouge1/rouge2 are unigram/bigram overlap; rougeL is the longest common subsequence over the
    whole text, blind to sentence boundaries; rougeLsum is the summary-level "union LCS" over
    sentences, which rouge-score takes to be the lines of the text. A text without newlines is
    first split into sentences by `split_sentences` (a regex on [.!?] followed by whitespace), as
    the transformers summarization examples do with nltk. With several references per
    prediction the best-scoring one counts, per ROUGE type.
    """
    per_hyp = _per_hypothesis_references(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, per_hyp):
        scores = scorer.score_multi([_newline_sentences(r) for r in refs], _newline_sentences(prediction))
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def _tokens(text_or_tokens: Tokens) -> list:
    return text_or_tokens.split() if isinstance(text_or_tokens, str) else list(text_or_tokens)


def _ngrams(tokens: list, n: int) -> list[tuple]:
    if n < 1:
        raise LmforgeError(f"n-gram order must be at least 1, got n={n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts_or_token_lists: Sequence[Tokens], n: int) -> float:
    """Corpus-level distinct-n: unique n-grams over all texts / total n-grams in all texts.

    Strings are split on whitespace; 0.0 when no text has n tokens.
    """
    counted = [g for item in texts_or_token_lists for g in _ngrams(_tokens(item), n)]
    return len(set(counted)) / len(counted) if counted else 0.0


def repetition_rate(tokens: Tokens, n: int = 3) -> float:
    """Share of the n-gram positions of one text whose n-gram already occurred at an earlier
    position of the same text, i.e. 1 - unique n-grams / total n-grams.

    "a b a b a" with n=2 has n-grams ab, ba, ab, ba: the last two repeat, so the rate is 0.5.
    A string is split on whitespace; 0.0 when the text has fewer than n tokens.
    """
    grams = _ngrams(_tokens(tokens), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def novelty_vs_source(output_tokens: Tokens, source_tokens: Tokens, n: int) -> float | None:
    """Share of the output's n-gram positions whose n-gram does not occur anywhere in the source
    (abstractiveness of a summary). Strings are split on whitespace; None when the output has
    fewer than n tokens."""
    grams = _ngrams(_tokens(output_tokens), n)
    if not grams:
        return None
    source = set(_ngrams(_tokens(source_tokens), n))
    return sum(g not in source for g in grams) / len(grams)
