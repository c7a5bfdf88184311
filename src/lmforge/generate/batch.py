"""Continuous batching: requests join a running batch of decoding rows at any step and leave it when done.

    batch = DecodingBatch(model, tokenizer)
    batch.add(BatchRequest(prompt_ids, config, n=2, seed=0, top_logprobs=5))
    while batch.requests:
        for request, events in batch.step().items():
            ...  # one TokenEvent per running choice of the request

A request is a prompt continued in `n` rows (its choices), with its own resolved GenerationConfig (greedy or
sampling), extra logits processors, seed and stop strings. Each step chooses every request's next tokens with
the same code as `generate` (`search.choose_tokens`, `build_processors`, `StoppingCriteria`) and then runs one
decoding step of the model for every row still running (`session.RowSession`). A request's tokens do not depend
on what else is in the batch: its processors see its own rows only, and it samples with its own generator,
drawing for all `n` choices at every step as `generate` does (a finished choice keeps its place in the draw),
so that a seeded request gives `generate(..., num_return_sequences=n, seed=seed)`'s tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.generate.processors import GenerationConfig, LogitsProcessor, build_processors, resolve_lengths
from lmforge.generate.search import StoppingCriteria, choose_tokens
from lmforge.generate.session import RowSession
from lmforge.losses import token_logprobs


@dataclass
class TokenEvent:
    """One generated token of one choice: its log-probability under the model (before any processor or
    temperature), the `top_logprobs` most probable tokens at that step, and why the choice ended with it
    ("stop": an EOS token or a stop string, "length": max_new_tokens), or None while it goes on."""

    choice: int
    token: int
    logprob: float
    top: list[tuple[int, float]]
    finish: str | None = None


@dataclass(eq=False)  # compared and hashed by identity: a request is a key of `step`'s result
class BatchRequest:
    """A prompt (token ids) to continue in `n` rows with a resolved GenerationConfig (greedy or sampling;
    `num_return_sequences` is ignored, `n` says how many), extra `processors` run after the config's ones,
    a `seed` for sampling, and `top_logprobs` alternatives per token. With `prompt_logprobs`, `prompt_scores`
    holds (logprob, top) for every prompt token after the first once the request joined a batch."""

    prompt: list[int]
    config: GenerationConfig
    n: int = 1
    seed: int | None = None
    processors: Sequence[LogitsProcessor] = ()
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    prompt_scores: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)

    @property
    def max_new_tokens(self) -> int:
        return resolve_lengths(self.config, len(self.prompt))[1] - len(self.prompt)


class _Running:
    """A request's decoding state in a batch."""

    def __init__(self, request: BatchRequest, pad: int, decode: Callable[[list[int]], str] | None, device):
        config, P = request.config, len(request.prompt)
        self.request, self.P, self.t = request, P, 0
        self.max_new = request.max_new_tokens
        processors, self.warpers = build_processors(config, P)
        self.processors = processors + list(request.processors)
        self.generator = None if request.seed is None else torch.Generator(device=device).manual_seed(request.seed)
        self.seqs = torch.full((request.n, P + self.max_new), pad, dtype=torch.long, device=device)
        self.seqs[:, :P] = torch.tensor(request.prompt, device=device)
        self.stopping = StoppingCriteria(P, self.max_new, config.eos_token_ids, config.stop_strings, decode)
        self.rows: list[int | None] = [None] * request.n  # the session row of each choice; None once it ended
        self.pad = pad

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every choice (n,) given the session's logits (rows, V); pad for ended choices,
        whose place in the draw is kept with placeholder logits."""
        live = [c for c, r in enumerate(self.rows) if r is not None]
        rows = torch.tensor([self.rows[c] for c in live], device=logits.device)
        if len(live) == len(self.rows):
            own = logits.index_select(0, rows)
        else:
            own = logits.new_zeros(len(self.rows), logits.shape[1])
            own[live] = logits.index_select(0, rows)
        tokens = choose_tokens(self.processors, self.warpers, self.seqs[:, :self.P + self.t], own,
                               self.request.config.do_sample, self.generator)
        if len(live) < len(self.rows):
            ended = torch.tensor([r is None for r in self.rows], device=tokens.device)
            tokens = tokens.masked_fill(ended, self.pad)
        self.seqs[:, self.P + self.t] = tokens
        self.t += 1
        return tokens

    def finished(self) -> list[str | None]:
        """Why each running choice ends with its newest token, or None (ended choices: None)."""
        if not self.stopping.stops_early:  # only the length can end a choice
            return [None if row is None or self.t < self.max_new else "length" for row in self.rows]
        live = torch.tensor([r is not None for r in self.rows], device=self.seqs.device)
        done = self.stopping(self.seqs[:, :self.P + self.t], live).tolist()
        last = self.seqs[:, self.P + self.t - 1].tolist()
        eos = set(self.request.config.eos_token_ids)
        reasons = []
        for c, row in enumerate(self.rows):
            if row is None or not done[c]:
                reasons.append(None)
            elif self.t < self.max_new or last[c] in eos or self._stop_string(c):
                reasons.append("stop")
            else:
                reasons.append("length")
        return reasons

    def _stop_string(self, choice: int) -> bool:
        stops = self.stopping.stop_strings
        return stops is not None and bool(stops(self.seqs[choice:choice + 1, :self.P + self.t], self.P)[0])


class DecodingBatch:
    """Rows of several requests decoded together over one decoder-only model (see the module docstring).

    Not thread-safe: one thread adds, steps and cancels. The model is shared, never changed.
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None):
        self.session = RowSession(model)
        self.decode = (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)) if tokenizer is not None else None
        self.device = model.lm_head.weight.device
        self.running: list[_Running] = []
        self.logits: torch.Tensor | None = None  # (rows, V): each row's next-token logits

    @property
    def rows(self) -> int:
        return self.session.batch_size

    @property
    def requests(self) -> list[BatchRequest]:
        return [r.request for r in self.running]

    def add(self, request: BatchRequest) -> None:
        """Run the request's prompt now; its choices take part from the next `step` on."""
        config = request.config
        pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_ids or [0])[0]
        running = _Running(request, pad, self.decode, self.device)
        first = self.rows
        with torch.inference_mode():
            logits = self.session.add(request.prompt, request.n, running.max_new, all_logits=request.prompt_logprobs)
            if request.prompt_logprobs:
                request.prompt_scores = self._prompt_scores(request.prompt, logits, request.top_logprobs)
                logits = logits[-1:]
        running.rows = list(range(first, first + request.n))
        self.running.append(running)
        logits = logits.expand(request.n, -1)
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])

    def _prompt_scores(self, prompt: list[int], logits: torch.Tensor, k: int):
        labels = torch.tensor(prompt[1:], device=logits.device)
        chosen = token_logprobs(logits[:-1], labels).tolist()
        top = top_alternatives(logits[:-1], k)
        return [(lp, alternatives) for lp, alternatives in zip(chosen, top)]

    def step(self) -> dict[BatchRequest, list[TokenEvent]]:
        """Choose the next token of every running choice, end the choices that are done, and run one
        decoding step for the others. Returns the new tokens by request; a request whose choices all ended
        has left the batch."""
        if not self.running:
            return {}
        with torch.inference_mode():
            tokens = torch.empty(self.rows, dtype=torch.long, device=self.device)
            chosen = {}
            for running in self.running:
                picked = running.choose(self.logits)
                live = [(c, r) for c, r in enumerate(running.rows) if r is not None]
                tokens[[r for _, r in live]] = picked[[c for c, _ in live]]
                chosen[id(running)] = running.finished()
            logprobs = token_logprobs(self.logits, tokens).tolist()
            top = top_alternatives(self.logits, max(r.request.top_logprobs for r in self.running))
            ids = tokens.tolist()
            events: dict[BatchRequest, list[TokenEvent]] = {}
            ended: list[int] = []
            for running in self.running:
                reasons, k = chosen[id(running)], running.request.top_logprobs
                out = events.setdefault(running.request, [])
                for c, row in enumerate(running.rows):
                    if row is None:
                        continue
                    out.append(TokenEvent(c, ids[row], logprobs[row], top[row][:k], reasons[c]))
                    if reasons[c] is not None:
                        ended.append(row)
                        running.rows[c] = None
            self._drop(ended)
            self.logits = self.session.step(tokens[self._order]) if self.rows else None
        return events

    def cancel(self, request: BatchRequest) -> None:
        """Drop a request's remaining choices now (a client that went away)."""
        running = next((r for r in self.running if r.request is request), None)
        if running is None:
            return
        gone = [r for r in running.rows if r is not None]
        running.rows = [None] * len(running.rows)
        with torch.inference_mode():
            self._drop(gone)
            self.logits = self.logits[self._order] if self.rows else None

    def _drop(self, rows: list[int]) -> None:
        """Remove session rows; `_order` is then, for each remaining row, the index it had before."""
        self._order = self.session.remove(rows) if rows else list(range(self.rows))
        renumber = {old: new for new, old in enumerate(self._order)}
        for running in self.running:
            running.rows = [None if r is None else renumber[r] for r in running.rows]
        self.running = [r for r in self.running if any(row is not None for row in r.rows)]
        if not self.rows:
            self.session.close()  # frees the cache of an idle batch

    def close(self) -> None:
        self.running, self.logits = [], None
        self.session.close()


def top_alternatives(logits: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """The k most probable tokens of every row of `logits` (N, V) with their log-probabilities."""
    if k <= 0:
        return [[] for _ in range(logits.shape[0])]
    values, indices = logits.topk(min(k, logits.shape[-1]), dim=-1)
    values = (values - logits.logsumexp(-1, keepdim=True)).tolist()
    return [list(zip(i, v)) for i, v in zip(indices.tolist(), values)]
