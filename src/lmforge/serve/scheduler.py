"""The decoding threads behind the HTTP server.

`Scheduler` owns one `DecodingBatch` and one thread that runs it: between two decoding steps it admits waiting
requests (their prompts run, their rows join the batch), drops the rows of requests whose client went away,
and after each step hands every request its new tokens. Requests that continuous batching does not serve
(beam search, group beam, contrastive search, encoder-decoder models) run one at a time on a second thread,
through `generate`, as a group of their own. Each queue is bounded: `submit` raises QueueFull when it is full.

A request's results reach the asyncio event loop through its `Job.queue`: ("tokens", prompt, [TokenEvent]) as
decoding goes, ("error", ApiError) if it failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

import torch

from lmforge.generate.api import generate
from lmforge.generate.batch import BatchRequest, DecodingBatch, TokenEvent, top_alternatives
from lmforge.generate.processors import FrequencyPresencePenaltyLogitsProcessor, LogitBiasLogitsProcessor
from lmforge.losses import logits_of, token_logprobs
from lmforge.serve.protocol import ApiError, Plan

log = logging.getLogger("lmforge.serve")


class QueueFull(Exception):
    """The bounded queue of waiting requests is full."""


class Job:
    """One HTTP request's decoding work: one BatchRequest per prompt; results go to `queue` on `loop`."""

    def __init__(self, plan: Plan, loop: asyncio.AbstractEventLoop):
        self.plan, self.loop = plan, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.completion_tokens = 0  # counted by the reader once every choice has ended
        self.requests = [BatchRequest(prompt, plan.config, n=plan.n, seed=plan.seed, processors=_processors(plan, prompt),
                                      top_logprobs=plan.logprobs or 0, prompt_logprobs=plan.echo and plan.logprobs is not None)
                         for prompt in plan.prompts]

    @property
    def rows(self) -> int:
        return len(self.requests) * self.plan.n

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass

    def cancel(self) -> None:
        self.cancelled = True


def _processors(plan: Plan, prompt: list[int]) -> list:
    processors = []
    if plan.frequency_penalty or plan.presence_penalty:
        processors.append(FrequencyPresencePenaltyLogitsProcessor(len(prompt), plan.frequency_penalty,
                                                                  plan.presence_penalty))
    if plan.logit_bias:
        processors.append(LogitBiasLogitsProcessor(plan.logit_bias))
    return processors


def _internal_error(exc: Exception) -> ApiError:
    return ApiError(500, f"decoding failed: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")


class _Worker:
    """A thread that takes jobs from a bounded queue."""

    def __init__(self, name: str, max_queue: int):
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.stopping:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.lock.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what waits and what runs (the HTTP server has let in-flight requests finish first), and end
        the thread."""
        with self.lock:
            self.stopping = True
            for job in [*self.waiting, *self.active()]:
                job.cancel()
                job.put(("error", ApiError(503, "the server is shutting down", type="server_error",
                                           code="shutting_down")))
            self.waiting.clear()
            self.lock.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def active(self) -> list[Job]:
        """The jobs being decoded now."""
        return []

    def _run(self) -> None:
        raise NotImplementedError


class Scheduler(_Worker):
    """Continuous batching over one model: at most `max_batch` rows decode together, `max_queue` requests wait."""

    def __init__(self, model, tokenizer, max_batch: int = 32, max_queue: int = 256):
        super().__init__("lmforge-batch", max_queue)
        self.batch = DecodingBatch(model, tokenizer)
        self.max_batch = max_batch
        self.jobs: dict[BatchRequest, tuple[Job, int]] = {}  # each running request's job and prompt index
        self.steps = 0

    def active(self) -> list[Job]:
        return list({id(job): job for job, _ in list(self.jobs.values())}.values())

    def _admit(self) -> list[Job]:
        """Take the waiting jobs that fit (a job that fits no batch is taken alone); drop cancelled ones."""
        admitted = []
        rows = self.batch.rows
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                continue
            if rows and rows + job.rows > self.max_batch:
                break
            admitted.append(self.waiting.popleft())
            rows += job.rows
        return admitted

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.jobs and not self.stopping:
                    self.lock.wait()
                if self.stopping and not self.jobs:
                    return
                admitted = self._admit()
            try:
                self._join(admitted)
                self._drop_cancelled()
                self._deliver(self.batch.step())
                self.steps += 1
            except Exception as exc:  # the server stays up: every running request gets the error
                log.exception("decoding step failed")
                for job, _ in set(self.jobs.values()):
                    job.put(("error", _internal_error(exc)))
                self.jobs.clear()
                self.batch.close()

    def _join(self, jobs: list[Job]) -> None:
        for job in jobs:
            for index, request in enumerate(job.requests):
                self.batch.add(request)
                self.jobs[request] = (job, index)

    def _drop_cancelled(self) -> None:
        for request, (job, _) in list(self.jobs.items()):
            if job.cancelled:
                self.batch.cancel(request)
                del self.jobs[request]

    def _deliver(self, events: dict[BatchRequest, list[TokenEvent]]) -> None:
        for request, tokens in events.items():
            job, index = self.jobs[request]
            job.put(("tokens", index, tokens))
        running = set(self.batch.requests)
        for request in [r for r in self.jobs if r not in running]:
            del self.jobs[request]


class SoloWorker(_Worker):
    """Runs, one at a time, the requests continuous batching does not serve, through `generate`."""

    def __init__(self, model, tokenizer, max_queue: int = 256):
        super().__init__("lmforge-solo", max_queue)
        self.model, self.tokenizer = model, tokenizer

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.stopping:
                    self.lock.wait()
                if not self.waiting:
                    return
                job = self.waiting.popleft()
            if job.cancelled:
                continue
            try:
                for index, request in enumerate(job.requests):
                    job.put(("tokens", index, self._decode(job, request)))
            except Exception as exc:
                log.exception("decoding failed")
                job.put(("error", _internal_error(exc)))

    def _decode(self, job: Job, request: BatchRequest) -> list[TokenEvent]:
        """Every choice's tokens at once, each scored under the model as it was decoded (teacher-forced)."""
        config, n = request.config, request.n
        greedy = not config.do_sample and config.num_beams == 1
        if not greedy:
            config = config.update(num_return_sequences=n)
        result = generate(self.model, [request.prompt], config, tokenizer=self.tokenizer, seed=request.seed)
        completions = result.completions[0] * (n if greedy else 1)
        events = []
        for choice, completion in enumerate(completions):
            tokens = completion.token_ids
            with torch.inference_mode():
                logits = self._logits(request.prompt, tokens)
                logprobs = token_logprobs(logits, torch.tensor(tokens, device=logits.device)).tolist()
            top = top_alternatives(logits, request.top_logprobs)
            at_length = len(tokens) >= request.max_new_tokens and tokens[-1] not in config.eos_token_ids
            for i, token in enumerate(tokens):
                finish = ("length" if at_length else "stop") if i == len(tokens) - 1 else None
                events.append(TokenEvent(choice, token, logprobs[i], top[i], finish))
        return events

    def _logits(self, prompt: list[int], tokens: list[int]) -> torch.Tensor:
        """The model's logits (len(tokens), V) at the step that produced each token."""
        device = next(self.model.parameters()).device
        if getattr(self.model, "is_encoder_decoder", False):
            start = self.model.config.decoder_start_token_id
            batch = {"input_ids": torch.tensor([prompt], device=device),
                     "attention_mask": torch.ones(1, len(prompt), dtype=torch.long, device=device),
                     "decoder_input_ids": torch.tensor([[start] + tokens[:-1]], device=device)}
            return logits_of(self.model, batch)[0].float()
        ids = torch.tensor([prompt + tokens[:-1]], device=device)
        return logits_of(self.model, {"input_ids": ids})[0, len(prompt) - 1:].float()
