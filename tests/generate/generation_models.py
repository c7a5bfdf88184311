"""Helpers for the generation tests: a fake decoding session whose logits and hidden states are given tables
(no model at all), and an output head that scripts greedy decoding."""

from __future__ import annotations

import torch


class TableSession:
    """A DecodingSession whose next-token logits depend only on the last token fed
    (`logits[token]`), and whose hidden state of a token is `hidden[token]`."""

    def __init__(self, logits: torch.Tensor, hidden: torch.Tensor | None = None, output_hidden: bool = False):
        self.table, self.embed = logits.float(), hidden
        self.output_hidden = output_hidden
        self.hidden = None
        self.calls = 0

    @property
    def batch_size(self) -> int:
        return self.prefix_ids.shape[0]

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        return None

    def start(self, input_ids, attention_mask, max_new_tokens):
        self.prefix_ids = input_ids
        self.prefix_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        self.last = input_ids[:, -1]
        if self.output_hidden:
            self.hidden = self.embed[input_ids]
        return self.table[self.last]

    def step(self, tokens):
        self.calls += 1
        self.last = tokens
        if self.output_hidden:
            self.hidden = self.embed[tokens][:, None]
        return self.table[tokens]

    def reorder(self, index):
        self.prefix_ids = self.prefix_ids.index_select(0, index)
        self.prefix_mask = self.prefix_mask.index_select(0, index)
        self.last = self.last.index_select(0, index)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)


class ScriptedHead(torch.nn.Module):
    """An output head that makes greedy decoding produce `script`, one token per call (then EOS)."""

    def __init__(self, script: list[int], vocab_size: int, eos: int):
        super().__init__()
        self.script, self.vocab_size, self.eos, self.calls = list(script), vocab_size, eos, 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        token = self.script[self.calls] if self.calls < len(self.script) else self.eos
        self.calls += 1
        logits = torch.zeros(*h.shape[:-1], self.vocab_size)
        logits[..., token] = 100.0
        return logits
