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
    Release what the session holds (its view of the model, weights packed for its decoding steps).
``batch_size``
    Current number of rows.
``prompt_limit(max_new_tokens) -> int | None``
    The longest prompt (``input_ids`` width) that leaves room for ``max_new_tokens``; None if
    unlimited. ``generate`` checks it before ``start`` (to explain or to truncate the prompt).

Logits are computed for the last position only; the session never holds more than one step of
hidden states. Sessions are used under ``torch.inference_mode()`` by the caller.

A session never changes the model: its speed-ups (generate/accel.py: one-query attention, weights packed for
the decoding batch, a compiled step) live in its cache and in its own view of the model, which shares every
parameter. Several sessions may decode with one model at once, from several threads; weights changed in
place between two generations are seen by the second.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lmforge.errors import LmforgeError
from lmforge.generate.accel import PACK_MIN_ROWS, decoding_attention, decoding_view, pack_view
from lmforge.generate.compiled import COMPILED_CAPACITY_STEP, CompiledSteps


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


class _Accelerated:
    """A session's view of its model for the decoding steps (generate.accel), made when a step first needs
    it, with weights packed for the steps' row count; released by `close`."""

    model: torch.nn.Module
    compiled = False
    _view: torch.nn.Module | None = None
    _view_made = False
    _packed_rows: int | None = None

    def _step_model(self, rows: int) -> torch.nn.Module:
        """The module a step of `rows` rows runs: the session's view where it is faster, else the model."""
        if rows < PACK_MIN_ROWS and not self.compiled:  # nothing to pack; a compiled step still fuses one-row products
            return self.model
        if not self._view_made:
            self._view, self._view_made = decoding_view(self.model, self.compiled), True
        if self._view is None:
            return self.model
        if rows != self._packed_rows:
            pack_view(self._view, rows)
            self._packed_rows = rows
        return self._view

    def close(self) -> None:
        self._view, self._view_made, self._packed_rows = None, False, None


class DecoderOnlySession(_Accelerated):
    """A DecoderLM and its KV cache, preallocated to prompt + max_new_tokens positions.

    Per step it passes explicit position ids and the running attention mask, so nothing is
    recomputed from the whole history. With `compile`, the prompt still runs eagerly, and every step
    runs a compiled graph (generate.compiled) that writes into the cache buffers in place and attends over
    the written positions under the running attention mask; the cache capacity is rounded up to a multiple
    of COMPILED_CAPACITY_STEP, so that nearby lengths share a graph.
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
        self.mask: torch.Tensor | None = None  # (B, virtual + capacity) 1 for real tokens, filled up to cache.length
        self.positions: torch.Tensor | None = None  # (B, 1) position id of the last token fed
        self.padded = False
        self.steps: CompiledSteps | None = None

    @property
    def virtual(self) -> int:
        """Positions the model's caches start with (its virtual tokens: prefix or prompt tuning)."""
        virtual = self.model.virtual_tokens
        return virtual.length if virtual is not None else 0

    @property
    def context_length(self) -> int:
        """The positions a prompt and its continuation may take: the model's context less the virtual tokens'."""
        return self.model.config.block_size - self.virtual

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
        virtual = self.virtual  # cached positions before the prompt's, visible to every row
        self.mask = torch.ones(B, virtual + capacity, dtype=torch.long, device=device)
        self.mask[:, virtual:virtual + T] = attention_mask
        self.cache = self.model.new_cache(B, capacity, attend=decoding_attention)
        self.steps = CompiledSteps() if self.compiled else None
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0) + virtual
        self.positions = positions[:, -1:]
        return self._forward(input_ids, positions.masked_fill(attention_mask == 0, 1), self.model)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.positions = self.positions + 1
        model = self._step_model(tokens.numel())
        if self.steps is not None:
            return self.steps.step(model, tokens, self.positions, self.mask, self.cache)
        return self._forward(tokens.view(-1, 1), self.positions, model)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        end = self.cache.length + ids.shape[1]
        mask = self.mask[:, :end] if self.padded else None
        h = model.hidden_states(ids, attention_mask=mask, position_ids=positions, cache=self.cache)
        self.hidden = h if self.output_hidden else None
        return model.lm_head(h[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        if self.steps is not None:
            self.steps.reorder(index, self.cache)
        else:
            self.cache.reorder(index)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.prefix_ids = self.prefix_ids.index_select(0, index)
        self.prefix_mask = self.prefix_mask.index_select(0, index)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)


class RowSession(_Accelerated):
    """A decoder-only model decoding rows that join and leave between steps: continuous batching.

    Unlike a DecodingSession, whose rows start together from one left-padded batch, a row here joins at any
    time with its own prompt (`add`: the prompt runs alone, into the row's part of a RowCache), every `step`
    feeds one token to each row at that row's own position, and rows leave by `remove`. Nothing is padded:
    a row's keys/values start at position 0, its position ids are its own token count, and a step's
    attention hides what lies beyond each row's own length. A row that runs alone therefore computes exactly
    what a one-row `DecoderOnlySession` computes for the same prompt; among other rows its logits differ
    only by float rounding in the batched products.
    """

    def __init__(self, model: torch.nn.Module):
        if getattr(model, "is_encoder_decoder", False):
            raise LmforgeError("continuous batching is implemented for decoder-only models only")
        self.model = model
        self.cache = model.new_row_cache(attend=decoding_attention)

    @property
    def batch_size(self) -> int:
        return self.cache.rows

    @property
    def context_length(self) -> int:
        return self.model.config.block_size

    def add(self, prompt: list[int], copies: int, max_new_tokens: int, all_logits: bool = False) -> torch.Tensor:
        """Run `prompt` and append `copies` rows that continue it, with room for `max_new_tokens` more
        tokens each. Returns float32 logits: of the next token (1, V), or with `all_logits` of the token
        after every prompt position (P, V)."""
        P = len(prompt)
        if P == 0:
            raise LmforgeError("the prompt is empty; give at least one token (e.g. the BOS token)")
        if P + max_new_tokens > self.context_length:
            raise LmforgeError(f"the prompt ({P} tokens) plus max_new_tokens ({max_new_tokens}) is longer than "
                               f"the model's context ({self.context_length} tokens)")
        first = self.cache.rows
        self.cache.reserve(first + copies, P + max_new_tokens)
        device = self.model.lm_head.weight.device
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        positions = torch.arange(P, device=device)[None]
        h = self.model.hidden_states(ids, position_ids=positions, cache=self.cache.row_cache(first))
        self.cache.lengths[first] = P
        for row in range(first + 1, first + copies):
            self.cache.copy_row(first, row)
        self.cache.set_rows(first + copies, self.cache.lengths[:first + copies])
        return self.model.lm_head(h[0] if all_logits else h[:, -1]).float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (rows,); logits (rows, V) of each row's next token."""
        cache = self.cache
        positions = cache.lengths[:cache.rows, None].clone()
        model = self._step_model(cache.rows)
        h = model.hidden_states(tokens.view(-1, 1), attention_mask=cache.step_mask(), position_ids=positions,
                                cache=cache)
        return model.lm_head(h[:, -1]).float()

    def remove(self, rows: list[int]) -> list[int]:
        """Drop rows; the rows kept move into the freed places (only rows that must move are copied).
        Returns, for each row now in use, the index it had before."""
        gone = set(rows)
        kept = [r for r in range(self.cache.rows) if r not in gone]
        order = list(range(len(kept)))
        holes = [r for r in range(len(kept)) if r in gone]
        movers = [r for r in kept if r >= len(kept)]
        for hole, mover in zip(holes, movers):
            self.cache.copy_row(mover, hole)
            order[hole] = mover
        self.cache.set_rows(len(kept), self.cache.lengths[:len(kept)].clone())
        return order

    def close(self) -> None:
        super().close()
        self.cache = self.model.new_row_cache(attend=decoding_attention)


def open_session(model: torch.nn.Module, output_hidden: bool = False,
                 decoder_start_token_id: int | None = None, compile: bool = False) -> DecodingSession:
    """The session for `model`'s kind. `decoder_start_token_id` (encoder-decoders only) overrides the
    model config's, as a generation config may. `compile` (decoder-only models): run the decoding steps
    as one graph compiled by torch.compile (see generate.compiled)."""
    if getattr(model, "is_encoder_decoder", False):
        if compile:
            raise LmforgeError("compile=True is implemented for decoder-only models only; drop it for "
                               "encoder-decoder models")
        return Seq2SeqSession(model, output_hidden=output_hidden, decoder_start_token_id=decoder_start_token_id)
    return DecoderOnlySession(model, output_hidden=output_hidden, compile=compile)


class Seq2SeqSession(_Accelerated):
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

    def _virtual(self) -> tuple[int, int]:
        """(source, decoder) positions the model's virtual tokens take (prompt or prefix tuning)."""
        virtual = self.model.virtual_tokens
        return (virtual.source_length, virtual.length) if virtual is not None else (0, 0)

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        limit = self._positions()
        return None if limit is None else limit - self._virtual()[0]

    @property
    def batch_size(self) -> int:
        return self.prefix_ids.shape[0]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              max_new_tokens: int) -> torch.Tensor:
        B, S = input_ids.shape
        if S == 0:
            raise LmforgeError("the input is empty; give at least one token to encode")
        limit, (source_virtual, decoder_virtual) = self._positions(), self._virtual()
        if limit is not None and max(S + source_virtual, 1 + max_new_tokens + decoder_virtual) > limit:
            raise LmforgeError(f"the input ({S} tokens) or 1 + max_new_tokens ({1 + max_new_tokens}) is longer than "
                               f"the model's positions ({limit}, of which the adapter's virtual tokens take "
                               f"{max(source_virtual, decoder_virtual)}); shorten the input or lower max_new_tokens")
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        order = torch.argsort(1 - attention_mask, dim=1, stable=True)  # real tokens first: right padding
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        self.encoder_mask = None if bool(attention_mask.all()) else attention_mask
        encoder_hidden = self.model.encode(input_ids, self.encoder_mask)
        self.encoder_mask = self.model.encoder_mask(self.encoder_mask)  # with virtual source tokens in front
        self.prefix_ids = torch.full((B, 1), self.start_token, dtype=torch.long, device=device)
        self.prefix_mask = torch.ones(B, 1, dtype=torch.long, device=device)
        self.cache = self.model.new_cache(B, 1 + max_new_tokens, attend=decoding_attention)
        return self._forward(self.prefix_ids, encoder_hidden, self.model)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(tokens.view(-1, 1), None, self._step_model(tokens.numel()))

    def _forward(self, ids: torch.Tensor, encoder_hidden: torch.Tensor | None, model: torch.nn.Module) -> torch.Tensor:
        h = model.decoder_hidden_states(ids, encoder_hidden, self.encoder_mask, cache=self.cache)
        self.hidden = h if self.output_hidden else None
        return model.logits(h[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask.index_select(0, index)
        self.prefix_ids = self.prefix_ids.index_select(0, index)
        self.prefix_mask = self.prefix_mask.index_select(0, index)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index)
