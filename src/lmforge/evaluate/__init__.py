"""Evaluate generated text: BLEU/chrF, ROUGE, n-gram diversity, and novelty against a source text
or against the whole training corpus."""

from lmforge.evaluate.novelty import NGramIndex, word_ids
from lmforge.evaluate.text_metrics import (
    bleu,
    chrf,
    distinct_n,
    novelty_vs_source,
    repetition_rate,
    rouge,
    split_sentences,
)

__all__ = ["NGramIndex", "bleu", "chrf", "distinct_n", "novelty_vs_source", "repetition_rate", "rouge",
           "split_sentences", "word_ids"]
