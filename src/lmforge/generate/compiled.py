"""Decoding steps compiled by torch.compile, for a decoder-only session (`generate(..., compile=True)`).

A step runs the model's one forward (`DecoderLM.hidden_states`) with a ready attention mask over the
written positions and, as its cache, a `_SlotWriter` that writes the new keys/values in place into
fixed-size buffers. No Python-side state changes inside the step and no data-dependent branch, so
torch.compile traces one graph for every step of a generation: the written length (the mask's last size)
is marked dynamic, every other size is fixed.

Beam reorders copy nothing: the session's `CompiledSteps` tracks which cache row holds each row's keys/values
at each position (`owner`) and the step gathers them inside the graph (10 % a step faster on the beam rows of
bench_generate than copying).
"""

from __future__ import annotations

import threading

import torch

from lmforge.generate.accel import decoding_attention
from lmforge.models.cache import KVCache

COMPILED_CAPACITY_STEP = 64  # compiled sessions round their cache up to a multiple of this many positions

# Compiled steps run one at a time: dynamo's compilation and the guard-skipping stance are process-wide state.
_STEP_LOCK = threading.Lock()


class _SlotWriter:
    """The cache the model sees inside a compiled step: writes the new keys/values at `slot` (a one-element
    tensor) into the fixed-size buffers, in place, and returns their first `end` positions; with `owner`
    ((B, capacity): the cache row that holds each row's keys/values at each position, as beam reorders
    left them) gathered from their owners' rows."""

    attend = staticmethod(decoding_attention)

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slot: torch.Tensor, end,
                 owner: torch.Tensor | None):
        self.keys, self.values, self.slot, self.end, self.owner = keys, values, slot, end, owner

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer].index_copy_(2, self.slot, k)
        self.values[layer].index_copy_(2, self.slot, v)
        if self.owner is None:
            return self.keys[layer][:, :, :self.end], self.values[layer][:, :, :self.end]
        return owned(self.keys[layer], self.owner, self.end), owned(self.values[layer], self.owner, self.end)

    def advance(self, n: int) -> None:
        """Nothing: the session advances its cache after the step."""


def owned(buffer: torch.Tensor, owner: torch.Tensor, end) -> torch.Tensor:
    """The first `end` positions of every row of a (B, heads, capacity, dim) cache buffer, each taken from
    the cache row `owner` (B, capacity) names for that row and position."""
    positions = torch.arange(end, device=owner.device)
    return buffer[owner[:, :end], :, positions].transpose(1, 2)


def _slot_step(model, ids, positions, visible, keys, values, slot, owner) -> torch.Tensor:
    """One decoding step; the written length is `visible`'s last size (marked dynamic by the caller)."""
    writer = _SlotWriter(keys, values, slot, visible.shape[-1], owner)
    h = model.hidden_states(ids, visible, positions, writer)
    return model.lm_head(h[:, -1]).float()


_compiled_slot_step = None


def compiled_step():
    """`_slot_step` compiled by torch.compile (inductor, C++ wrapper), created on first use.

    One decoding step of a decoder-only model becomes one graph: norms, residual adds, activations and
    the attention of one query fuse into a few C++ kernels around the matrix products, and the code that
    calls them is C++ too (inductor's `cpp_wrapper`), which removes most of eager PyTorch's per-operation
    cost and the Python of a generated graph. Every size is fixed (`dynamic=False`: one graph per batch
    size and cache capacity) except the written length, which the session marks dynamic: one compilation
    serves every step of a generation, and every later generation of the same shapes, over any model of
    the same structure. It takes seconds to tens of seconds on a CPU (inductor's on-disk cache shortens it
    across processes). Results match eager decoding to float rounding, not bitwise (the fused kernels add
    in another order).
    """
    global _compiled_slot_step
    if _compiled_slot_step is None:
        _compiled_slot_step = torch.compile(_slot_step, dynamic=False, options={"cpp_wrapper": True})
    return _compiled_slot_step


class CompiledSteps:
    """The compiled steps of one session over its cache, and the owner table that beam reorders update.

    Once two steps have run the graph with all of dynamo's guards checked, later steps check only the
    guards that tell graphs apart (0.2-0.4 ms a step less on the CPU): between the steps of a session
    nothing changes but the written length and the tensors' contents; a reorder to another batch size, or
    the first reorder that sets up the owner table (another graph), starts the count again.
    """

    def __init__(self):
        self.checked = 0  # steps run in this shape with all of dynamo's guards checked
        self.owner: torch.Tensor | None = None  # after beam reorders: (B, capacity) cache row per position

    def step(self, model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
             cache: KVCache) -> torch.Tensor:
        """Logits (B, V) of one step: the new tokens (B,) at `positions` (B, 1), attending to the written
        positions where `mask` (B, capacity) is 1; writes at, then advances past, `cache.length`."""
        slot = cache.length
        visible = mask[:, None, None, :slot + 1].bool()  # written positions that are not padding
        torch._dynamo.mark_dynamic(visible, 3)
        ids = tokens.reshape(-1, 1).contiguous()  # a beam's tokens come as a strided view: same layout always
        if self.owner is not None:  # every row writes its new keys/values into its own cache row
            self.owner[:, slot] = torch.arange(ids.shape[0], device=ids.device)
        args = (model, ids, positions, visible, cache.keys, cache.values, torch.tensor([slot], device=ids.device),
                self.owner)
        with _STEP_LOCK:
            logits = self._run(args)
        cache.advance(1)
        return logits

    def _run(self, args) -> torch.Tensor:
        if self.checked < 2:
            self.checked += 1
            return compiled_step()(*args)
        try:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return compiled_step()(*args)
        except RuntimeError as error:
            # no compiled graph fits and dynamo will not compile in this stance: past its recompile limit the
            # step runs eagerly, and so it does from now on, under every guard
            if "skip_guard_eval_unsafe" not in str(error):
                raise
            self.checked = -(1 << 30)
            return compiled_step()(*args)

    def reorder(self, index: torch.Tensor, cache: KVCache) -> None:
        """Keep rows `index`. To the same batch size (a beam reshuffle) the cache rows stay and their owners
        change; to another one, every row's keys/values first move into its own cache row."""
        if index.numel() == cache.batch_size:
            if self.owner is None:
                self.owner = torch.arange(cache.batch_size, device=index.device)[:, None].repeat(1, cache.max_len)
                self.checked = 0
            self.owner = self.owner.index_select(0, index)
            return
        if self.owner is not None:
            written = cache.length
            for buffer in cache.keys + cache.values:
                # the gather copies (advanced indexing), so writing it back into the same rows cannot alias
                buffer[:, :, :written].copy_(owned(buffer, self.owner, written))
            self.owner = None
        cache.reorder(index)
        self.checked = 0
