"""Incremental detokenization: turn a stream of token ids into a stream of text pieces.

Decoding one token at a time is wrong for byte-level tokenizers (a character may span several
tokens) and for SentencePiece ones (a token's leading space depends on its neighbours). As in
vLLM's detokenizer and transformers' ``TextStreamer``, we keep the ids, decode a short window that
starts at the last emitted boundary, and emit only the new, stable suffix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
CONTEXT_TOKENS = 5  # prompt tokens kept as left context, as vLLM does


class IncrementalDecoder:
    """Feed token ids with :meth:`push`, get back the text they complete; :meth:`flush` at the end.

    The concatenation of every piece returned equals ``decode(ids)`` (with ``context_ids``:
    ``decode(context + ids)`` minus ``decode(context)``). A piece is held back while its text ends
    in U+FFFD, i.e. while a multi-byte character is still incomplete.

    ``decode_fn(ids, skip_special_tokens=...)`` is typically ``tokenizers.Tokenizer.decode``.
    ``context_ids`` are prompt ids that precede the stream: they are never emitted, but they let the
    first generated token decode as it would after the prompt (e.g. keep its leading space).
    """

    def __init__(
        self,
        decode_fn: Callable[..., str],
        skip_special_tokens: bool = True,
        context_ids: Sequence[int] = (),
    ):
        self.decode_fn = decode_fn
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(context_ids)[-CONTEXT_TOKENS:]
        self.prefix_offset = 0  # start of the decoding window
        self.read_offset = len(self.ids)  # ids before this are emitted (or context)

    def _decode(self, ids: list[int]) -> str:
        return self.decode_fn(ids, skip_special_tokens=self.skip_special_tokens)

    def _pending_text(self) -> str:
        """Text of the ids after ``read_offset``, given the window's left context."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        return self._decode(self.ids[self.prefix_offset :])[len(prefix_text) :]

    def _emit(self, text: str) -> str:
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        text = self._pending_text()
        if not text or text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """Return whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if self.read_offset == len(self.ids):
            return ""
        return self._emit(self._pending_text())
