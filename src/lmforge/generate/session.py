"""Decoding sessions: the only thing the search strategies know about a model.

A search strategy (greedy, sampling, beam, group beam, contrastive) asks a session for next-token
logits, feeds it the tokens it chose, and reorders its rows when beams are expanded or reshuffled.
It never sees the model kind, the KV cache, position ids or attention masks. A decoder-only model
is wrapped by :class:`DecoderOnlySession`; an encoder-decoder model implements the same contract
as ``Seq2SeqSession`` (encoder run once in ``start``, decoder with self- and cross-attention cache,
fed ``decoder_start_token_id`` first).

The contract (:class:`DecodingSession`):

``start(input_ids, attention_mask, max_new_tokens) -> logits``
    Run the prompt (decoder-only) or the encoder input plus the decoder start token
    (encoder-decoder). ``input_ids`` is (B, T) with *left* padding, ``attention_mask`` (B, T) marks
    real tokens with 1 (None: no padding). Capacity for ``max_new_tokens`` further steps is
    reserved. Returns float32 logits (B, V) of the first new token.
``prefix_ids``, ``prefix_mask``
    (B, P) output-side tokens that precede the generated ones, and their mask: the padded prompt
    and its attention mask for a decoder-only model, the decoder start token (mask 1) for an
    encoder-decoder. Logits processors see ``cat(prefix_ids, generated)``; repetition penalties
    ignore positions where ``prefix_mask`` is 0. Reordered together with the rows.
``step(tokens) -> logits``
    Feed one new token per row, ``tokens`` (B,) long; returns logits (B, V) of the next token.
``reorder(index)``
    Keep rows ``index`` (1-D long tensor, any length, repeats allowed): beam reshuffling, or
    expanding B prompts to B * num_beams rows after ``start``. Later calls see the new batch.
``hidden``
    With ``output_hidden=True`` at construction: final (normed) decoder hidden states (B, T, H) of
    the tokens fed by the last ``start`` (T = P) or ``step`` (T = 1) call; used by contrastive
    search. None otherwise.
``close()``
    Release what the session holds on the model (weights packed for its decoding steps).
``batch_size``
    Current number of rows.
``prompt_limit(max_new_tokens) -> int | None``
    The longest prompt (``input_ids`` width) that leaves room for ``max_new_tokens``; None if
    unlimited. ``generate`` checks it before ``start`` (to explain or to truncate the prompt).

Logits are computed for the last position only; the session never holds more than one step of
hidden states. Sessions are used under ``torch.inference_mode()`` by the caller.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lmforge.errors import LmforgeError
from lmforge.models.layers import pack_linears, unpack_linears


class DecodingSession(Protocol):
    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    hidden: torch.Tensor | None

    @property
    def batch_size(self) -> int: ...

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              max_new_tokens: int) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, index: torch.Tensor) -> None: ...

    def prompt_limit(self, max_new_tokens: int) -> int | None: ...

    def close(self) -> None: ...


class _Packing:
    """Packs the model's weights for the row count of the decoding steps (see models.layers.Linear):
    once per row count, released by `close`."""

    model: torch.nn.Module
    packed_rows: int | None = None

    def _pack(self, rows: int) -> None:
        if rows != self.packed_rows:
            pack_linears(self.model, rows)
            self.packed_rows = rows

    def close(self) -> None:
        if self.packed_rows is not None:
            unpack_linears(self.model)
            self.packed_rows = None


class DecoderOnlySession(_Packing):
    """A DecoderLM and its KV cache, preallocated to prompt + max_new_tokens positions.

    Per step it passes explicit position ids and the running attention mask, so nothing is
    recomputed from the whole history. With `compile`, the prompt still runs eagerly, and every step
    runs `compiled_step`, which writes into the cache buffers in place and attends over the written
    positions under the running attention mask; the cache capacity is rounded up to a multiple of
    COMPILED_CAPACITY_STEP, so that nearby lengths share a graph. Beam reorders then copy nothing: the
    session tracks which cache row holds each row's keys/values at each position (`owner`) and the step
    gathers them inside the graph (10 % a step faster on the beam rows of bench_generate than copying).
    """

    def __init__(self, model: torch.nn.Module, output_hidden: bool = False, compile: bool = False):
        if compile and output_hidden:
            raise LmforgeError("compile=True does not support contrastive search (it needs every step's hidden "
                               "states); drop compile or penalty_alpha")
        self.model = model
        self.output_hidden = output_hidden
        self.compiled = compile
        self.hidden: torch.Tensor | None = None
        self.cache = None
        self.mask: torch.Tensor | None = None  # (B, capacity) 1 for real tokens, filled up to cache.length
        self.positions: torch.Tensor | None = None  # (B, 1) position id of the last token fed
        self.padded = False
        self.checked = 0  # compiled: steps run in this session (and shape) with all of dynamo's guards checked
        self.owner: torch.Tensor | None = None  # compiled, after beam reorders: (B, capacity) cache row per position

    @property
    def context_length(self) -> int:
        return self.model.config.block_size

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        return self.context_length - max_new_tokens

    @property
    def batch_size(self) -> int:
        return self.prefix_ids.shape[0]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              max_new_tokens: int) -> torch.Tensor:
        B, T = input_ids.shape
        if T == 0:
            raise LmforgeError("the prompt is empty; give at least one token (e.g. the BOS token)")
        capacity = T + max_new_tokens
        if capacity > self.context_length:
            raise LmforgeError(f"the prompt ({T} tokens) plus max_new_tokens ({max_new_tokens}) is longer than "
                               f"the model's context ({self.context_length} tokens); shorten the prompt, "
                               "lower max_new_tokens, or truncate the prompt on the left")
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long, device=device)
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        self.padded = not bool(attention_mask.all())
        self.prefix_ids, self.prefix_mask = input_ids, attention_mask
        if self.compiled:  # a few spare slots: nearby lengths give the same buffer shapes
            capacity = min(-(-capacity // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP, self.context_length)
        self.mask = torch.ones(B, capacity, dtype=torch.long, device=device)
        self.mask[:, :T] = attention_mask
        self.cache = self.model.new_cache(B, capacity)
        self.checked, self.owner = 0, None
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.positions = positions[:, -1:]
        return self._forward(input_ids, positions.masked_fill(attention_mask == 0, 1))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.positions = self.positions + 1
        self._pack(tokens.numel())  # eager, also before a compiled step: the graph uses the packed weights
        if self.compiled:
            return self._compiled_step(tokens)
        return self._forward(tokens.view(-1, 1), self.positions)

    def _compiled_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One step through `compiled_step`. `visible` is marked dynamic in its last dimension (the written
        length), so one graph serves every step of the session. Once two steps have run it with all of
        dynamo's guards checked, later steps check only the guards that tell graphs apart (0.2-0.4 ms a
        step less on the CPU): between the steps of a session nothing changes but the written length and
        the tensors' contents, and a reorder to another batch size starts the count again."""
        slot = self.cache.length
        visible = self.mask[:, None, None, :slot + 1].bool()  # written positions that are not padding
        torch._dynamo.mark_dynamic(visible, 3)
        ids = tokens.reshape(-1, 1).contiguous()  # a beam's tokens come as a strided view: same layout always
        if self.owner is not None:  # every row writes its new keys/values into its own cache row
            self.owner[:, slot] = torch.arange(self.batch_size, device=tokens.device)
        args = (self.model, ids, self.positions, visible, self.cache.keys, self.cache.values,
                torch.tensor([slot], device=tokens.device), self.owner)
        if self.checked >= 2:
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    logits = compiled_step()(*args)
            except RuntimeError as error:
                # no compiled graph fits and dynamo will not compile in this stance: past its recompile limit
                # the step runs eagerly, and so it does from now on, under every guard
                if "skip_guard_eval_unsafe" not in str(error):
                    raise
                self.checked = -(1 << 30)
                logits = compiled_step()(*args)
        else:
            logits = compiled_step()(*args)
            self.checked += 1
        self.cache.advance(1)
        return logits

    def _settle(self) -> None:
        """Copy every row's cached keys/values into the row's own cache row, where `owner` points elsewhere."""
        if self.owner is None:
            return
        written = self.cache.length
        for buffer in self.cache.keys + self.cache.values:
            # the gather copies (advanced indexing), so writing it back into the same rows cannot alias
            buffer[:, :, :written].copy_(_owned(buffer, self.owner, written))
        self.owner = None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        end = self.cache.length + ids.shape[1]
        mask = self.mask[:, :end] if self.padded else None
        h = self.model.hidden_states(ids, attention_mask=mask, position_ids=positions, cache=self.cache)
        self.hidden = h if self.output_hidden else None
        return self.model.lm_head(h[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        if self.compiled and index.numel() == self.batch_size:  # beam reshuffle: the cache rows stay, their
            if self.owner is None:  # owners change; steps then gather (another graph: all guards again)
                self.owner = torch.arange(self.batch_size, device=index.device)[:, None].repeat(1, self.cache.max_len)
                self.checked = 0
            self.owner = self.owner.index_select(0, index)
        else:  # eager, or compiled to another batch size: new shapes, the next steps run under all guards
            self._settle()
            self.cache.reorder(index)
            self.checked = 0
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.prefix_ids = self.prefix_ids.index_select(0, index)
        self.prefix_mask = self.prefix_mask.index_select(0, index)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)


def open_session(model: torch.nn.Module, output_hidden: bool = False,
                 decoder_start_token_id: int | None = None, compile: bool = False) -> DecodingSession:
    """The session for `model`'s kind. `decoder_start_token_id` (encoder-decoders only) overrides the
    model config's, as a generation config may. `compile` (decoder-only models): run the decoding steps
    as one graph compiled by torch.compile (see `compiled_step`)."""
    if getattr(model, "is_encoder_decoder", False):
        if compile:
            raise LmforgeError("compile=True is implemented for decoder-only models only; drop it for "
                               "encoder-decoder models")
        return Seq2SeqSession(model, output_hidden=output_hidden, decoder_start_token_id=decoder_start_token_id)
    return DecoderOnlySession(model, output_hidden=output_hidden, compile=compile)


COMPILED_CAPACITY_STEP = 64  # compiled sessions round their cache up to a multiple of this many positions


class _SlotWriter:
    """The cache the blocks see inside a compiled step: writes the new keys/values at `slot` (a one-element
    tensor) into the fixed-size buffers, in place, and returns their first `end` positions; with `owner`
    ((B, capacity): the cache row that holds each row's keys/values at each position, as beam reorders
    left them) gathered from their owners' rows."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slot: torch.Tensor, end,
                 owner: torch.Tensor | None):
        self.keys, self.values, self.slot, self.end, self.owner = keys, values, slot, end, owner

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer].index_copy_(2, self.slot, k)
        self.values[layer].index_copy_(2, self.slot, v)
        if self.owner is None:
            return self.keys[layer][:, :, :self.end], self.values[layer][:, :, :self.end]
        return _owned(self.keys[layer], self.owner, self.end), _owned(self.values[layer], self.owner, self.end)


def _owned(buffer: torch.Tensor, owner: torch.Tensor, end) -> torch.Tensor:
    """The first `end` positions of every row of a (B, heads, capacity, dim) cache buffer, each taken from
    the cache row `owner` (B, capacity) names for that row and position."""
    positions = torch.arange(end, device=owner.device)
    return buffer[owner[:, :end], :, positions].transpose(1, 2)


def _slot_step(model, ids, positions, visible, keys, values, slot, owner) -> torch.Tensor:
    """One decoding step; the written length is `visible`'s last size (marked dynamic by the caller)."""
    writer = _SlotWriter(keys, values, slot, visible.shape[-1], owner)
    h = model.slot_step_hidden(ids, positions, visible, writer)
    return model.lm_head(h[:, -1]).float()


_compiled_slot_step = None


def compiled_step():
    """`_slot_step` compiled by torch.compile (inductor, C++ wrapper), created on first use.

    One decoding step of a decoder-only model becomes one graph: norms, residual adds, activations and
    the attention of one query fuse into a few C++ kernels around the matrix products, and the code that
    calls them is C++ too (inductor's `cpp_wrapper`), which removes most of eager PyTorch's per-operation
    cost and the Python of a generated graph. Every size is fixed (`dynamic=False`: one graph per batch
    size and cache capacity) except the written length, which the session marks dynamic: one compilation
    serves every step of a generation. It takes seconds to tens of seconds on a CPU (inductor's on-disk
    cache shortens it across processes). Results match eager decoding to float rounding, not bitwise
    (the fused kernels add in another order).
    """
    global _compiled_slot_step
    if _compiled_slot_step is None:
        _compiled_slot_step = torch.compile(_slot_step, dynamic=False, options={"cpp_wrapper": True})
    return _compiled_slot_step


class Seq2SeqSession(_Packing):
    """An EncoderDecoderLM: `start` runs the encoder once and feeds the decoder its start token; the
    decoder's self-attention keys/values and the cross-attention keys/values live in an EncDecCache
    preallocated to 1 + max_new_tokens positions.

    The prompt is the encoder input. It comes left-padded (the contract) and is re-padded to the
    right, as transformers' tokenizers pad encoder inputs: BART's absolute positions then count
    from each source's first token. No decoder row is ever padded (all start together).
    """

    def __init__(self, model: torch.nn.Module, output_hidden: bool = False, decoder_start_token_id: int | None = None):
        self.model = model
        self.output_hidden = output_hidden
        self.hidden: torch.Tensor | None = None
        self.start_token = decoder_start_token_id if decoder_start_token_id is not None \
            else model.config.decoder_start_token_id
        if self.start_token is None:
            raise LmforgeError("the model config has no decoder_start_token_id; set it in config.json "
                               "or pass decoder_start_token_id")
        self.cache = None
        self.encoder_mask: torch.Tensor | None = None  # (B, S), None when no source is padded

    def _positions(self) -> int | None:
        c = self.model.config
        return c.max_position_embeddings if c.position == "learned" else None

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        return self._positions()

    @property
    def batch_size(self) -> int:
        return self.prefix_ids.shape[0]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              max_new_tokens: int) -> torch.Tensor:
        B, S = input_ids.shape
        if S == 0:
            raise LmforgeError("the input is empty; give at least one token to encode")
        limit = self._positions()
        if limit is not None and max(S, 1 + max_new_tokens) > limit:
            raise LmforgeError(f"the input ({S} tokens) or 1 + max_new_tokens ({1 + max_new_tokens}) is longer than "
                               f"the model's positions ({limit}); shorten the input or lower max_new_tokens")
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        order = torch.argsort(1 - attention_mask, dim=1, stable=True)  # real tokens first: right padding
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        self.encoder_mask = None if bool(attention_mask.all()) else attention_mask
        encoder_hidden = self.model.encode(input_ids, self.encoder_mask)
        self.prefix_ids = torch.full((B, 1), self.start_token, dtype=torch.long, device=device)
        self.prefix_mask = torch.ones(B, 1, dtype=torch.long, device=device)
        self.cache = self.model.new_cache(B, 1 + max_new_tokens)
        return self._forward(self.prefix_ids, encoder_hidden)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self._pack(tokens.numel())
        return self._forward(tokens.view(-1, 1), None)

    def _forward(self, ids: torch.Tensor, encoder_hidden: torch.Tensor | None) -> torch.Tensor:
        h = self.model.decoder_hidden_states(ids, encoder_hidden, self.encoder_mask, cache=self.cache)
        self.hidden = h if self.output_hidden else None
        return self.model.logits(h[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask.index_select(0, index)
        self.prefix_ids = self.prefix_ids.index_select(0, index)
        self.prefix_mask = self.prefix_mask.index_select(0, index)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)
