"""Losses and log-probabilities of labelled tokens, for both model kinds.

A batch is a dict of right-padded tensors. Decoder-only: `input_ids` (B, T) and `labels` (B, T), where
`labels[i, t]` is the token that follows position t (-100 where nothing is scored: a prompt, padding).
Encoder-decoder: `input_ids` and `attention_mask` (B, S) of the source, and `labels` (B, T) of the target
(-100 on padding); the decoder reads the labels shifted behind its start token (teacher forcing).

Training (every task), `lmforge score`, evaluation and preference objectives compute their numbers here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # a label that does not count, as in transformers


def logits_of(model: nn.Module, batch: dict) -> torch.Tensor:
    """Teacher-forced logits (B, T, vocab) at the labelled positions of `batch`; `model` may be wrapped
    (DDP, torch.compile) as long as it forwards the model's arguments."""
    if batch.get("decoder_input_ids") is not None:
        return model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, nll): the mean cross-entropy over the labelled positions, label-smoothed when asked, and the
    plain mean negative log-likelihood (detached, for logging; the loss itself without smoothing).

    With smoothing, ignored positions are weighted by zero rather than selected out, which would copy the
    (tokens x vocabulary) log-probabilities forward and scatter them back in the backward pass.
    """
    flat = logits.flatten(0, 1).float()
    labels = labels.flatten()
    if not label_smoothing:
        loss = F.cross_entropy(flat, labels, ignore_index=IGNORE)
        return loss, loss.detach()
    logp = F.log_softmax(flat, dim=-1)
    keep = (labels != IGNORE).to(logp.dtype)
    count = keep.sum().clamp(min=1)
    nll = (-logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1) * keep).sum() / count
    uniform = (-logp.mean(-1) * keep).sum() / count
    return (1 - label_smoothing) * nll + label_smoothing * uniform, nll.detach()


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of the negative log-likelihoods of the labelled tokens, their count): token-weighted means over
    several batches add these up."""
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total, int((labels != IGNORE).sum())


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) at every position (B, T) in float32, 0 where the label is ignored."""
    logp = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(labels == IGNORE, 0.0)


def sequence_logprobs(model: nn.Module, batch: dict) -> torch.Tensor:
    """The log-probability (B,) of each row's labelled tokens given what precedes them (or the source)."""
    return token_logprobs(logits_of(model, batch), batch["labels"]).sum(-1)


def causal_labels(ids: torch.Tensor, scored_from: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) to score the tokens of `ids` (B, L) from position `scored_from` on, each given
    the tokens before it: the inputs drop the last token, the labels are the ids shifted by one."""
    labels = ids[:, 1:].clone()
    labels[:, :scored_from - 1] = IGNORE
    return ids[:, :-1], labels
