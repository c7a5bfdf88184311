"""From generated tokens to OpenAI's responses: text pieces, logprobs, chunks and usage.

Each choice's tokens become text through `ChoiceText`, which decodes incrementally (a character split over
tokens is released whole), holds back text that could begin a stop string and ends the text before one, as
`generate.stream` does, and releases each token's log-probability with the piece of text the token starts in.
A token that adds no text to the answer (an EOS token, the tokens of a stop string) is counted in `usage` but
not listed in `logprobs`. Streamed pieces concatenate to the non-streamed text.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from tokenizers import decoders

from lmforge.generate.batch import TokenEvent
from lmforge.generate.stopping import release_text
from lmforge.generate.streaming import IncrementalDecoder

NO_LOGPROB = -9999.0  # JSON has no -inf; what OpenAI-compatible servers send for an impossible token


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenNames:
    """Each token id's bytes and text as OpenAI shows them (`bytes`, `token`), cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_level = isinstance(tokenizer.backend.decoder, decoders.ByteLevel)
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self.cache:
            data = self._bytes(token)
            self.cache[token] = (data.decode("utf-8", errors="replace"), list(data))
        return self.cache[token]

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.id_to_token(token) or ""
        table = _byte_decoder()
        if self.byte_level and piece and all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return self.tokenizer.decode([token]).encode("utf-8")


@dataclass
class Scored:
    """A token listed in logprobs: its id, log-probability (None for the first token of an echoed prompt),
    alternatives, and where its text starts in the choice's text."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] | None
    offset: int


@dataclass
class Piece:
    text: str
    tokens: list[Scored] = field(default_factory=list)
    finish: str | None = None


class ChoiceText:
    """One choice's text, built from its token events (see the module docstring)."""

    def __init__(self, decode, context: list[int], stops: list[str], start: int = 0):
        self.decoder = IncrementalDecoder(decode, context_ids=context)
        self.stops = stops
        self.held = ""
        self.released = start  # characters of the choice's text released so far (after an echoed prompt)
        self.pending: list[Scored] = []
        self.done = False
        self.generated = 0

    def push(self, event: TokenEvent) -> Piece | None:
        """The text (and scored tokens) this token releases; None once the choice has ended."""
        if self.done:
            return None
        self.generated += 1
        self.pending.append(Scored(event.token, event.logprob, event.top, self.released + len(self.held)))
        self.held += self.decoder.push(event.token)
        final = event.finish is not None
        if final:
            self.held += self.decoder.flush()
        text, stopped = release_text(self.held, self.stops, final)
        self.held = self.held[len(text):]
        self.released += len(text)
        self.done = final or stopped
        ready = [s for s in self.pending if s.offset < self.released]
        self.pending = [] if self.done else [s for s in self.pending if s.offset >= self.released]
        return Piece(text, ready, ("stop" if stopped else event.finish) if self.done else None)


def _finite(logprob: float) -> float:
    return logprob if logprob > NO_LOGPROB else NO_LOGPROB


class CompletionFormat:
    """`text_completion` objects: choices with `text`, logprobs as tokens/token_logprobs/top_logprobs/text_offset."""

    object = "text_completion"
    prefix = "cmpl"

    def __init__(self, names: TokenNames):
        self.names = names

    def logprobs(self, tokens: list[Scored]) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for s in tokens:
            out["tokens"].append(self.names(s.token)[0])
            out["token_logprobs"].append(None if s.logprob is None else _finite(s.logprob))
            out["top_logprobs"].append(None if s.top is None else
                                       {self.names(t)[0]: _finite(lp) for t, lp in s.top})
            out["text_offset"].append(s.offset)
        return out

    def choice(self, index: int, text: str, tokens: list[Scored] | None, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None if tokens is None else self.logprobs(tokens),
                "finish_reason": finish}

    def first_chunks(self, index: int) -> list[dict]:
        return []


class ChatFormat(CompletionFormat):
    """`chat.completion` objects: choices with a `message` (or a `delta` when streamed), logprobs as `content`
    entries of token, logprob, bytes and top_logprobs."""

    object = "chat.completion"
    prefix = "chatcmpl"

    def entry(self, token: int, logprob: float) -> dict:
        text, data = self.names(token)
        return {"token": text, "logprob": _finite(logprob), "bytes": data}

    def logprobs(self, tokens: list[Scored]) -> dict:
        return {"content": [{**self.entry(s.token, s.logprob), "top_logprobs": [self.entry(t, lp) for t, lp in s.top]}
                            for s in tokens], "refusal": None}

    def choice(self, index: int, text: str, tokens: list[Scored] | None, finish: str | None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None if tokens is None else self.logprobs(tokens), "finish_reason": finish}

    def delta(self, index: int, text: str, tokens: list[Scored] | None, finish: str | None) -> dict:
        return {"index": index, "delta": {"content": text},
                "logprobs": None if tokens is None else self.logprobs(tokens), "finish_reason": finish}

    def first_chunks(self, index: int) -> list[dict]:
        return [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}]


def envelope(fmt: CompletionFormat, request_id: str, model: str, created: int, chunk: bool) -> dict:
    return {"id": request_id, "object": fmt.object + (".chunk" if chunk and fmt.object != "text_completion" else ""),
            "created": created, "model": model, "system_fingerprint": None}


def new_id(fmt: CompletionFormat) -> tuple[str, int]:
    return f"{fmt.prefix}-{uuid.uuid4().hex}", int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
