"""The HTTP server: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, /health, and the playground.

Built on Starlette (an ASGI toolkit: routing, streaming responses, static files, lifespan) served by uvicorn.
FastAPI would add pydantic models whose validation errors are FastAPI's, not OpenAI's; here every request is
validated by `protocol`, so that each mistake gets OpenAI's error body with one sentence naming the field.
Decoding runs on the scheduler's threads; handlers only wait on their job's queue, so the event loop stays free
to accept and stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lmforge.generate.api import resolve_config, start_token
from lmforge.generate.streaming import IncrementalDecoder
from lmforge.serve import protocol
from lmforge.serve.chat import DEFAULT_STOPS, ChatTemplate, TemplateError
from lmforge.serve.output import ChatFormat, ChoiceText, CompletionFormat, Scored, TokenNames, envelope, new_id, usage
from lmforge.serve.protocol import ApiError, Plan, bad
from lmforge.serve.scheduler import Job, QueueFull, Scheduler, SoloWorker

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20


class Server:
    """What the routes share: the model and tokenizer, the chat template, and the decoding threads."""

    def __init__(self, checkpoint, model_name: str, max_batch: int = 32, max_queue: int = 256,
                 max_body: int = MAX_BODY):
        self.model, self.tokenizer = checkpoint.model, checkpoint.tokenizer
        self.defaults = dict(checkpoint.generation_config or {})
        self.model_name = model_name
        self.max_batch, self.max_body = max_batch, max_body
        self.context = self._context()
        self.vocab_size = self.model.config.vocab_size
        self.names = TokenNames(self.tokenizer)
        self.start_id = start_token(resolve_config(self.model, None, self.defaults, self.tokenizer), self.tokenizer)
        self.template = ChatTemplate.from_folder(checkpoint.path, self.tokenizer)
        self.batched = not getattr(self.model, "is_encoder_decoder", False)
        self.scheduler = Scheduler(self.model, self.tokenizer, max_batch, max_queue) if self.batched else None
        self.solo = SoloWorker(self.model, self.tokenizer, max_queue)
        self.created = int(time.time())

    def _context(self) -> int:
        config = self.model.config
        return getattr(config, "block_size", None) or getattr(config, "max_position_embeddings", None) or 1 << 30

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    @property
    def workers(self) -> list:
        return [w for w in (self.scheduler, self.solo) if w is not None]

    # ---- requests into plans --------------------------------------------------------------------------

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if not isinstance(name, str):
            raise bad("'model' is required: the name GET /v1/models lists", "model", "missing_field")
        if name != self.model_name:
            raise ApiError(404, f"the model '{name}' does not exist here; this server serves '{self.model_name}'",
                           "model", "model_not_found")

    def plan(self, body: dict, prompts: list[list[int]], texts: list[str], max_tokens: int | None, stops: list[str],
             logprobs: int | None, echo: bool) -> Plan:
        common = protocol.parse_common(body, self.vocab_size)
        limit = self.context - max(len(p) for p in prompts)
        asked = max_tokens is not None
        if max_tokens is None or max_tokens > limit:
            if limit < 1 or asked:
                longest = max(prompts, key=len)
                raise protocol.context_error(len(longest), max_tokens or 1, self.context, asked)
            max_tokens = limit
        config = protocol.generation_config(body, self.model, self.tokenizer, self.defaults, max_tokens, common["n"])
        all_stops = common.pop("stops") + stops
        config = config.update(stop_strings=all_stops or None)
        plan = Plan(prompts, texts, config, stops=all_stops, logprobs=logprobs, echo=echo, **common)
        rows = len(prompts) * plan.n
        if plan.batched and self.batched and rows > self.max_batch:
            raise bad(f"{len(prompts)} prompt(s) x n={plan.n} make {rows} sequences, more than the server decodes at "
                      f"once (--max-batch {self.max_batch})", "n", "too_many_sequences")
        if not (plan.batched and self.batched) and (plan.logit_bias or plan.frequency_penalty or plan.presence_penalty):
            raise bad(f"logit_bias, frequency_penalty and presence_penalty work with greedy decoding and sampling; "
                      f"this request uses {plan.strategy.replace('_', ' ')} search", "logit_bias", "unsupported")
        return plan

    def completion_plan(self, body: dict) -> Plan:
        protocol.check_fields(body, protocol.COMPLETION_FIELDS)
        self.check_model(body)
        protocol.refuse_unsupported(body)
        prompts, texts = protocol.prompt_ids(body.get("prompt", ""), self.tokenizer, self.vocab_size)
        prompts = [p or [self.start_id] for p in prompts]
        logprobs = protocol.number(body, "logprobs", 0, protocol.MAX_LOGPROBS, integer=True)
        max_tokens = protocol.number(body, "max_tokens", 1, integer=True, default=16)
        return self.plan(body, prompts, texts, max_tokens, [], logprobs, protocol.boolean(body, "echo"))

    def chat_plan(self, body: dict) -> Plan:
        protocol.check_fields(body, protocol.CHAT_FIELDS)
        self.check_model(body)
        protocol.refuse_unsupported(body)
        messages = protocol.chat_messages(body)
        try:
            text = self.template.render(messages, protocol.boolean(body, "add_generation_prompt", True))
        except TemplateError as exc:
            raise ApiError(422, str(exc), "messages", "chat_template_error") from None
        prompt = self.tokenizer.encode(text) or [self.start_id]
        max_tokens = protocol.number(body, "max_completion_tokens", 1, integer=True)
        max_tokens = protocol.number(body, "max_tokens", 1, integer=True, default=max_tokens)
        want = protocol.boolean(body, "logprobs")
        top = protocol.number(body, "top_logprobs", 0, protocol.MAX_LOGPROBS, integer=True)
        if top is not None and not want:
            raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        stops = DEFAULT_STOPS if self.template.is_default else []
        return self.plan(body, [prompt], [text], max_tokens, stops, (top or 0) if want else None, False)

    # ---- running plans ---------------------------------------------------------------------------------

    def submit(self, plan: Plan) -> Job:
        job = Job(plan, asyncio.get_running_loop())
        worker = self.scheduler if plan.batched and self.batched else self.solo
        try:
            worker.submit(job)
        except QueueFull:
            raise ApiError(429, f"the server is busy ({worker.queued} requests are waiting); retry shortly",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        return job

    async def pieces(self, job: Job):
        """(choice index, Piece) as the job's tokens arrive; echoed prompts come first in their choice's
        first piece. Ends when every choice has ended."""
        plan = job.plan
        decode = self.tokenizer.decode
        texts = []
        for prompt, prompt_text in zip(plan.prompts, plan.prompt_texts):
            start = len(prompt_text) if plan.echo else 0
            texts += [ChoiceText(decode, prompt, plan.stops, start) for _ in range(plan.n)]
        started = [False] * len(texts)
        open_choices = len(texts)
        while open_choices:
            kind, *rest = await job.queue.get()
            if kind == "error":
                raise rest[0]
            index, events = rest
            for event in events:
                c = index * plan.n + event.choice
                piece = texts[c].push(event)
                if piece is None:
                    continue
                if not started[c]:
                    started[c] = True
                    if plan.echo:
                        piece.text = plan.prompt_texts[index] + piece.text
                        piece.tokens = self._prompt_scores(job, index) + piece.tokens
                if texts[c].done:
                    open_choices -= 1
                yield c, piece
        job.cancel()  # choices may end on text before their rows do: free the rows
        job.completion_tokens = sum(t.generated for t in texts)

    def _prompt_scores(self, job: Job, index: int) -> list[Scored]:
        plan, request = job.plan, job.requests[index]
        if plan.logprobs is None:
            return []
        decoder = IncrementalDecoder(self.tokenizer.decode, skip_special_tokens=False)
        offsets, length = [], 0
        for token in request.prompt:
            offsets.append(length)
            length += len(decoder.push(token))
        scores = [(None, None)] + request.prompt_scores
        return [Scored(t, lp, top, o) for t, (lp, top), o in zip(request.prompt, scores, offsets)]

    async def collect(self, job: Job, fmt: CompletionFormat) -> dict:
        plan = job.plan
        n = len(plan.prompts) * plan.n
        texts, tokens, finish = [""] * n, [[] for _ in range(n)], [None] * n
        async for c, piece in self.pieces(job):
            texts[c] += piece.text
            tokens[c] += piece.tokens
            finish[c] = piece.finish or finish[c]
        request_id, created = new_id(fmt)
        logprobs = plan.logprobs is not None
        return {**envelope(fmt, request_id, self.model_name, created, chunk=False),
                "choices": [fmt.choice(c, texts[c], tokens[c] if logprobs else None, finish[c]) for c in range(n)],
                "usage": usage(self._prompt_tokens(plan), job.completion_tokens)}

    @staticmethod
    def _prompt_tokens(plan: Plan) -> int:
        return sum(len(p) for p in plan.prompts)

    async def stream(self, job: Job, fmt: CompletionFormat):
        plan = job.plan
        request_id, created = new_id(fmt)
        head = envelope(fmt, request_id, self.model_name, created, chunk=True)
        extra = {"usage": None} if plan.include_usage else {}
        chat = isinstance(fmt, ChatFormat)
        logprobs = plan.logprobs is not None
        try:
            for c in range(len(plan.prompts) * plan.n):
                for choice in fmt.first_chunks(c):
                    yield _sse({**head, "choices": [choice], **extra})
            async for c, piece in self.pieces(job):
                if not (piece.text or piece.tokens or piece.finish):
                    continue
                make = fmt.delta if chat else fmt.choice
                yield _sse({**head, "choices": [make(c, piece.text, piece.tokens if logprobs else None, piece.finish)],
                            **extra})
            if plan.include_usage:
                yield _sse({**head, "choices": [], "usage": usage(self._prompt_tokens(plan), job.completion_tokens)})
        except ApiError as error:
            yield _sse(error.body())
        finally:
            job.cancel()
        yield "data: [DONE]\n\n"


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object; 413 past `limit` bytes, 400 if it is not JSON."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {int(length):,} bytes; the limit is {limit:,}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the limit of {limit:,} bytes", code="body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    return data


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_app(server: Server) -> Starlette:
    """The ASGI application over `server` (whose threads start and stop with the application)."""

    async def respond(request: Request, make_plan, fmt: CompletionFormat, headers: dict) -> Response:
        plan = make_plan(await read_json(request, server.max_body))
        job = server.submit(plan)
        if plan.stream:
            return StreamingResponse(server.stream(job, fmt), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", **headers})
        result = asyncio.ensure_future(server.collect(job, fmt))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not result.done():  # the client went away: its rows leave the batch at the next step
            job.cancel()
            result.cancel()
            return Response(status_code=499)
        gone.cancel()
        return JSONResponse(result.result(), headers=headers)

    async def completions(request: Request) -> Response:
        return await respond(request, server.completion_plan, CompletionFormat(server.names), {})

    async def chat(request: Request) -> Response:
        header = {"X-Lmforge-Chat-Template": "default" if server.template.is_default else "model"}
        return await respond(request, server.chat_plan, ChatFormat(server.names), header)

    def model_card() -> dict:
        return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "lmforge",
                "context_length": server.context,
                "chat_template": "default" if server.template.is_default else "model",
                "continuous_batching": server.batched}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        if request.path_params["name"] != server.model_name:
            raise ApiError(404, f"the model '{request.path_params['name']}' does not exist here", "model",
                           "model_not_found")
        return JSONResponse(model_card())

    async def health(request: Request) -> Response:
        scheduler = server.scheduler
        return JSONResponse({"status": "ok", "model": server.model_name,
                             "running": len(scheduler.active()) if scheduler else 0,
                             "queued": sum(w.queued for w in server.workers),
                             "rows": scheduler.batch.rows if scheduler else 0, "max_batch": server.max_batch,
                             "steps": scheduler.steps if scheduler else 0})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"there is no {request.url.path} here; the API is under /v1",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        error = ApiError(exc.status_code, messages.get(exc.status_code, str(exc.detail)), code="not_found"
                         if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    @asynccontextmanager
    async def lifespan(app):
        server.start()
        try:
            yield
        finally:
            server.stop()

    routes = [Route("/", index), Route("/health", health), Route("/v1/models", models),
              Route("/v1/models/{name:path}", model),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
