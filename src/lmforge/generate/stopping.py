"""Stop strings: end a sequence once its generated text contains one of them.

Matching is on decoded text rather than token ids, so it is independent of how the tokenizer splits
the string. Only the generated tokens are considered (the prompt never triggers a stop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmforge.errors import LmforgeError

REPLACEMENT_CHAR = "\ufffd"


def _as_list(stop_strings: str | Sequence[str]) -> list[str]:
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
    if not stops or any(not isinstance(s, str) or not s or REPLACEMENT_CHAR in s for s in stops):
        raise LmforgeError(
            f"stop_strings must be one or more non-empty strings without U+FFFD (got {stop_strings!r})."
        )
    return stops


class StopStrings:
    """Which rows' generated text contains a stop string, checked after every new token.

    Called every step, a stop string can only newly appear ending inside the text of the newest
    token, so only a tail of tokens is decoded: ``4 * (longest + 1)`` of them, because every token
    that yields text yields at least one UTF-8 byte and a character has at most four. The tail is
    known to be wide enough when the tokens before the newest one give at least ``longest``
    characters (replacement characters at the cut are not counted); if not, e.g. when tokens decode
    to nothing (skipped special tokens), all generated tokens of that row are decoded.
    """

    def __init__(self, stop_strings: str | Sequence[str], decode_fn: Callable[[list[int]], str]):
        self.stop_strings = _as_list(stop_strings)
        self.decode_fn = decode_fn
        self.longest = max(len(s) for s in self.stop_strings)
        self.window = 4 * (self.longest + 1)

    def __call__(
        self, input_ids: torch.Tensor, prompt_len: int, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bool (batch,) tensor: True where the text of ``input_ids[:, prompt_len:]`` contains a stop
        string. Rows where ``active`` is False are not decoded and report False."""
        seq_len = input_ids.shape[1]
        generated_len = seq_len - prompt_len
        window = min(self.window, generated_len)
        tails = input_ids[:, seq_len - window :].tolist()
        rows_active = [True] * len(tails) if active is None else active.tolist()
        finished = []
        for row, (tail, is_active) in enumerate(zip(tails, rows_active)):
            if not is_active or not tail:
                finished.append(False)
                continue
            covered = (
                window == generated_len
                or len(self.decode_fn(tail[:-1]).strip(REPLACEMENT_CHAR)) >= self.longest
            )
            ids = tail if covered else input_ids[row, prompt_len:].tolist()
            text = self.decode_fn(ids)
            finished.append(any(s in text for s in self.stop_strings))
        return torch.tensor(finished, dtype=torch.bool, device=input_ids.device)


def truncate_at_stop_string(text: str, stop_strings: str | Sequence[str], include_stop: bool = False) -> str:
    """Cut ``text`` at the stop string occurrence that ends first (the one that stopped generation);
    keep the stop string itself only with ``include_stop``. Text without a stop string is unchanged."""
    best: tuple[int, int] | None = None  # (end, start) of the earliest-ending occurrence
    for stop in _as_list(stop_strings):
        start = text.find(stop)
        if start >= 0:
            candidate = (start + len(stop), start)
            best = candidate if best is None else min(best, candidate)
    if best is None:
        return text
    end, start = best
    return text[:end] if include_stop else text[:start]


def release_text(held: str, stops: list[str], final: bool = False) -> tuple[str, bool]:
    """(text safe to emit, whether a stop string was reached): everything before the earliest stop
    string; otherwise all but the longest tail that could still begin one."""
    cut = truncate_at_stop_string(held, stops) if stops else held
    if len(cut) < len(held):
        return cut, True
    if final or not stops:
        return held, False
    keep = max((k for s in stops for k in range(1, min(len(s), len(held) + 1)) if held.endswith(s[:k])), default=0)
    return held[:len(held) - keep], False
