"""Scoring text under a model: per-token log-probabilities, log-likelihood, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.losses import causal_labels, token_logprobs


@dataclass
class TextScore:
    """`token_logprobs[i]` is log p(token_ids[i + 1] | token_ids[:i + 1]): one fewer than `token_ids`."""

    token_ids: list[int]
    token_logprobs: list[float]
    log_likelihood: float
    perplexity: float

    def to_dict(self) -> dict:
        return asdict(self)


def _context_length(model) -> int:
    return model.config.block_size


def continuation_logprobs(model, prefix: Sequence[int], continuation: Sequence[int]) -> list[float]:
    """log p(continuation[i] | prefix + continuation[:i]) for every continuation token (one forward pass)."""
    ids = list(prefix) + list(continuation)
    if not prefix:
        raise LmforgeError("scoring needs at least one token of context before the scored tokens")
    if len(ids) > _context_length(model):
        raise LmforgeError(f"the text ({len(ids)} tokens) is longer than the model's context "
                           f"({_context_length(model)} tokens); score a shorter text")
    if not continuation:
        return []
    device = next(model.parameters()).device
    input_ids, labels = causal_labels(torch.tensor([ids], device=device), scored_from=len(prefix))
    with torch.inference_mode():
        return token_logprobs(model(input_ids), labels)[0, len(prefix) - 1:].tolist()


def score_ids(model, token_ids: Sequence[int]) -> TextScore:
    token_ids = [int(t) for t in token_ids]
    if len(token_ids) < 2:
        raise LmforgeError(f"the text has {len(token_ids)} token(s); scoring needs at least two "
                           "(or prepend the BOS token)")
    logprobs = continuation_logprobs(model, token_ids[:1], token_ids[1:])
    total = sum(logprobs)
    return TextScore(token_ids, logprobs, total, math.exp(-total / len(logprobs)))


def score_text(model, tokenizer, text: str, bos: bool = False) -> TextScore:
    """Score `text`; with `bos` the model's BOS token is prepended, so the first token is scored too."""
    ids = tokenizer.encode(text)
    if bos:
        start = tokenizer.bos_token_id
        if start is None:
            start = getattr(model.config, "bos_token_id", None)
        if start is None:
            raise LmforgeError("--bos was given but neither the tokenizer nor the model has a BOS token")
        ids = [start] + ids
    return score_ids(model, ids)
