"""Key/value cache: preallocated per-layer buffers that attention writes into and reads views of.

A cache is the state of one decoding run. Attention layers that have one call `cache.update` with their new
keys/values and then `cache.attend`: plain SDPA by default; a decoding session passes its own `attend`
(generate/accel.py: one query as two matrix products on the CPU), so the model holds no decoding-speed code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from lmforge.models.layers import attention

Attend = Callable[..., torch.Tensor]  # (q, k, v, mask, is_causal, dropout, scale) -> output, as layers.attention
Cache = TypeVar("Cache")


def with_virtual_tokens(model, make: Callable[[int], Cache], max_len: int) -> Cache:
    """A new cache, `make(capacity)`, with room for `max_len` positions after the virtual tokens of `model`
    (prefix or prompt tuning: adapt/prefix.py), which it holds already: its `length` is their number."""
    virtual = model.virtual_tokens
    if virtual is None:
        return make(max_len)
    cache = make(max_len + virtual.length)
    virtual.prefill(model, cache)
    return cache


class KVCache:
    """Keys and values of every layer, one pair of buffers per layer shaped (batch, kv_heads, max_len, head_dim).

    `length` counts the positions already written; a forward pass over T new tokens writes
    positions [length, length + T) in every layer and then advances `length` by T. (Separate buffers
    per layer, not one tensor: a compiled decoding step can then update each in place.) `attend` computes
    the attention of the new queries over the cached keys/values.
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, attend: Attend = attention):
        self.attend = attend
        shape = (batch, n_kv_head, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.spares: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # reorder targets by batch size
        self.length = 0
        self.max_len = max_len

    @classmethod
    def over(cls, keys: list[torch.Tensor], values: list[torch.Tensor], attend: Attend = attention) -> KVCache:
        """An empty cache that writes into given buffers (views of another cache's, for instance)."""
        cache = cls.__new__(cls)
        cache.attend, cache.keys, cache.values, cache.spares = attend, keys, values, {}
        cache.length, cache.max_len = 0, keys[0].shape[2]
        return cache

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of `layer` and return views of everything cached so far."""
        new = k.shape[2]
        end = self.length + new
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        keys, values = self.keys[layer], self.values[layer]
        keys.narrow(2, self.length, new).copy_(k)
        values.narrow(2, self.length, new).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search reordering, or expanding a prefill to several beams).

        Only the written positions are copied, into buffers kept from an earlier reorder to the same
        batch size where there is one (beam search then copies once per step and allocates nothing).
        """
        buffers = self.keys + self.values
        batch = index.numel()
        new = self.spares.pop(batch, None)
        if new is None:
            new = ([k.new_empty((batch,) + k.shape[1:]) for k in self.keys],
                   [v.new_empty((batch,) + v.shape[1:]) for v in self.values])
        for src, dst in zip(buffers, new[0] + new[1]):
            torch.index_select(src.narrow(2, 0, self.length), 0, index, out=dst.narrow(2, 0, self.length))
        self.spares[self.batch_size] = (self.keys, self.values)
        self.keys, self.values = new


class RowCache:
    """Keys and values of rows that started at different times (continuous batching): row r holds its own
    `lengths[r]` positions, from position 0 on, and a decoding step writes each row's new key/value at that
    row's own length. Buffers are (row_capacity, kv_heads, max_len, head_dim) per layer, of which the first
    `rows` rows are in use; they grow on demand (`reserve`).

    `length` is the longest row's length: a step's attention reads that many positions (plus the new one) of
    every row, under a mask that hides what lies past each row's own length (see `step_mask`).
    """

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, attend: Attend = attention):
        self.attend = attend
        self.shape = (n_layer, n_kv_head, head_dim)
        self.device, self.dtype = device, dtype
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = torch.zeros(0, dtype=torch.long, device=device)
        self.rows = 0
        self.length = 0

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, positions) the buffers hold."""
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    def reserve(self, rows: int, positions: int) -> None:
        """Make room for `rows` rows of `positions` positions each, keeping what is written (the buffers are
        reallocated at twice the rows they need, at the positions asked)."""
        have_rows, have_positions = self.capacity
        if rows <= have_rows and positions <= have_positions:
            return
        new_rows = max(have_rows, 2 * rows if rows > have_rows else rows)
        new_positions = max(have_positions, positions)
        n_layer, heads, dim = self.shape
        shape = (new_rows, heads, new_positions, dim)
        keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(n_layer)]
        values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(n_layer)]
        for old, new in zip(self.keys + self.values, keys + values):
            new[:self.rows, :, :self.length].copy_(old[:self.rows, :, :self.length])
        lengths = torch.zeros(new_rows, dtype=torch.long, device=self.device)
        lengths[:self.rows] = self.lengths[:self.rows]
        self.keys, self.values, self.lengths = keys, values, lengths

    def row_cache(self, row: int) -> KVCache:
        """A one-row KVCache writing into row `row` from position 0 (to run a new row's prompt)."""
        return KVCache.over([k[row:row + 1] for k in self.keys], [v[row:row + 1] for v in self.values], self.attend)

    def set_rows(self, rows: int, lengths: torch.Tensor) -> None:
        """Declare the first `rows` rows in use, with these lengths."""
        self.rows = rows
        self.lengths[:rows] = lengths
        self.length = int(lengths.max()) if rows else 0

    def copy_row(self, source: int, target: int) -> None:
        """Copy row `source`'s written positions into row `target`."""
        n = int(self.lengths[source])
        for buffer in self.keys + self.values:
            buffer[target, :, :n].copy_(buffer[source, :, :n])
        self.lengths[target] = n

    def step_mask(self) -> torch.Tensor | None:
        """The attention mask (rows, 1, 1, length + 1) of a step of one new token per row: each row sees its
        own positions and the new one; None when every row has the same length (nothing to hide)."""
        lengths = self.lengths[:self.rows]
        if self.rows <= 1 or bool((lengths == self.length).all()):
            return None
        return (torch.arange(self.length + 1, device=lengths.device) <= lengths[:, None])[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new key/value per row (k, v: (rows, heads, 1, dim)) at the row's own length; return the
        first `length + 1` positions of every row."""
        if k.shape[2] != 1:
            raise ValueError("a RowCache step takes one new token per row; run a prompt through row_cache")
        rows = torch.arange(self.rows, device=k.device)
        keys, values = self.keys[layer], self.values[layer]
        keys[rows, :, self.lengths[:self.rows]] = k[:, :, 0]
        values[rows, :, self.lengths[:self.rows]] = v[:, :, 0]
        end = self.length + 1
        return keys[:self.rows, :, :end], values[:self.rows, :, :end]

    def advance(self, n: int) -> None:
        self.lengths[:self.rows] += n
        self.length = int(self.lengths[:self.rows].max())


class EncDecCache:
    """The decoder's cache in an encoder-decoder model.

    Self-attention keys/values grow with every decoded token in a preallocated `KVCache`; the
    cross-attention keys/values of every layer depend only on the encoder output, so each layer computes
    its own on the first `decode` and later steps reuse them (`cross`: one (keys, values) pair per layer,
    shaped (batch, heads, source_len, head_dim), None until computed). `attend` serves self- and
    cross-attention.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, attend: Attend = attention):
        self.attend = attend
        self.self_attn = KVCache(n_layer, batch, n_head, max_len, head_dim, device, dtype, attend)
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return self.self_attn.length

    @property
    def max_len(self) -> int:
        return self.self_attn.max_len

    @property
    def batch_size(self) -> int:
        return self.self_attn.batch_size

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.self_attn.update(layer, k, v)

    def advance(self, n: int) -> None:
        self.self_attn.advance(n)

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows of both caches (beam search reordering, or expanding to several beams)."""
        self.self_attn.reorder(index)
        self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                      for kv in self.cross]


class GrowingCache:
    """A cache that grows by concatenation, with autograd: what a forward pass without a cache attends to when a
    model has virtual tokens (adapt/prefix.py). It starts with the virtual tokens' keys/values of each layer,
    (batch, kv_heads, length, head_dim) or None, and `update` appends the new ones; gradients reach both.
    `cross` serves an encoder-decoder's cross-attention as in `EncDecCache`."""

    def __init__(self, keys_values: list[tuple[torch.Tensor, torch.Tensor] | None], attend: Attend = attention):
        self.keys_values = list(keys_values)
        self.length = next((k.shape[2] for k, _ in filter(None, self.keys_values)), 0)
        self.attend = attend
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.keys_values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        held = self.keys_values[layer]
        if held is not None:
            k, v = torch.cat((held[0].expand(k.shape[0], -1, -1, -1), k), dim=2), \
                torch.cat((held[1].expand(v.shape[0], -1, -1, -1), v), dim=2)
        self.keys_values[layer] = (k, v)
        return k, v

    def advance(self, n: int) -> None:
        self.length += n
