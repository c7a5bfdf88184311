"""Key/value cache: preallocated per-layer buffers that attention writes into and reads views of.

A cache is the state of one decoding run. Attention layers that have one call `cache.update` with their new
keys/values and then `cache.attend`: plain SDPA by default; a decoding session passes its own `attend`
(generate/accel.py: one query as two matrix products on the CPU), so the model holds no decoding-speed code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmforge.models.layers import attention

Attend = Callable[..., torch.Tensor]  # (q, k, v, mask, is_causal, dropout, scale) -> output, as layers.attention


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
