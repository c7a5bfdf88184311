"""OpenAI's request and response schemas for /v1/completions and /v1/chat/completions.

Requests are validated here into `Plan`s (what to decode, with which GenerationConfig) and `ApiError`s (the
status and `{"error": {...}}` body OpenAI returns). Fields are handled in three ways, consistently:

- OpenAI fields that lmforge implements, and every GenerationConfig parameter of lmforge (`top_k`, `min_p`,
  `num_beams`, ...; with the openai client, through `extra_body`), plus `ignore_eos`;
- OpenAI fields that change nothing here (IGNORED: `user`, `metadata`, `store`, ...) are accepted and ignored;
- anything else is refused (400) with the closest valid name, and so are OpenAI features lmforge does not have
  (UNSUPPORTED: tools, non-text response formats, `suffix`, `best_of` above `n`).

Sampling defaults are OpenAI's (temperature 1, top_p 1, no top-k), overridden by the model folder's
generation_config.json, overridden by the request. temperature 0 means greedy decoding; a request that asks for
beams (`num_beams`) or contrastive search (`penalty_alpha`) without a temperature decodes deterministically.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.generate.api import resolve_config, strategy_name
from lmforge.generate.processors import GenerationConfig

COMMON = ("model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs", "stream", "stream_options",
          "frequency_penalty", "presence_penalty", "logit_bias")
COMPLETION_FIELDS = (*COMMON, "prompt", "echo", "suffix", "best_of")
CHAT_FIELDS = (*COMMON, "messages", "top_logprobs", "max_completion_tokens", "response_format", "tools",
               "tool_choice", "functions", "function_call", "parallel_tool_calls", "add_generation_prompt")
IGNORED = ("user", "metadata", "store", "service_tier", "prediction", "reasoning_effort", "modalities", "audio",
           "web_search_options")
EXTRA = ("ignore_eos",)
# GenerationConfig parameters the OpenAI fields set, or that belong to the model rather than a request
CONFIG_OWNED = {"max_new_tokens": "max_tokens", "max_length": "max_tokens", "num_return_sequences": "n",
                "stop_strings": "stop"}
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig) if f.name not in CONFIG_OWNED)
MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOPS = 16
SERVER_DEFAULTS = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


@dataclass
class ApiError(Exception):
    """An error answered as OpenAI does: `status` and {"error": {"message", "type", "param", "code"}}."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"
    headers: dict = field(default_factory=dict)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, message, param, code)


@dataclass
class Plan:
    """A validated request: the prompts (token ids; their text for echo), how many choices each, the
    GenerationConfig, and what to return."""

    prompts: list[list[int]]
    prompt_texts: list[str]
    config: GenerationConfig
    n: int
    seed: int | None
    stops: list[str]
    logprobs: int | None  # alternatives per token (0: the chosen token's only); None: no logprobs
    echo: bool
    stream: bool
    include_usage: bool
    logit_bias: dict[int, float]
    frequency_penalty: float
    presence_penalty: float

    @property
    def strategy(self) -> str:
        return strategy_name(self.config)

    @property
    def batched(self) -> bool:
        """Whether continuous batching serves it (greedy or sampling); beams and contrastive search run alone."""
        return self.strategy in ("greedy", "sample")


def check_fields(body: dict, allowed: tuple[str, ...]) -> None:
    known = set(allowed) | set(IGNORED) | set(EXTRA) | set(CONFIG_FIELDS)
    for name in body:
        if name in CONFIG_OWNED:
            raise bad(f"'{name}' is set by the OpenAI field '{CONFIG_OWNED[name]}'; use that", name)
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise bad(f"unknown field '{name}'{hint} (accepted: OpenAI's fields and lmforge's generation parameters)",
                      name, "unknown_field")


def number(body: dict, name: str, low: float | None = None, high: float | None = None, integer: bool = False,
            default=None):
    value = body.get(name, default)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise bad(f"'{name}' must be {kind} (got {value!r})", name, "invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"'{name}' must be finite (got {value!r})", name, "invalid_value")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise bad(f"'{name}' must be {bounds} (got {value!r})", name, "invalid_value")
    return value


def boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false (got {value!r})", name, "invalid_type")
    return value


def _stops(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad(f"'stop' holds {len(stops)} strings; at most {MAX_STOPS}", "stop", "invalid_value")
    if any(not s or "\ufffd" in s for s in stops):
        raise bad("stop strings must be non-empty and without U+FFFD", "stop", "invalid_value")
    return stops


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("'logit_bias' must map token ids to biases", "logit_bias", "invalid_type")
    bias = {}
    for key, b in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad(f"'logit_bias' key {key!r} is not a token id", "logit_bias", "invalid_value") from None
        if not 0 <= token < vocab_size:
            raise bad(f"'logit_bias' names token {token}, outside the vocabulary of {vocab_size} tokens",
                      "logit_bias", "invalid_value")
        bias[token] = float(number({"logit_bias": b}, "logit_bias", -100, 100))
    return bias


def refuse_unsupported(body: dict) -> None:
    if body.get("suffix"):
        raise bad("'suffix' (insertion) is not supported by lmforge", "suffix", "unsupported")
    best_of = number(body, "best_of", 1, MAX_N, integer=True)
    if best_of is not None and best_of != number(body, "n", 1, MAX_N, integer=True, default=1):
        raise bad("'best_of' other than n is not supported; use num_beams for a search over hypotheses",
                  "best_of", "unsupported")
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad(f"'{name}' (tool calling) is not supported by lmforge", name, "unsupported")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise bad(f"'{name}' (tool calling) is not supported by lmforge", name, "unsupported")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise bad("only the response_format {\"type\": \"text\"} is supported", "response_format", "unsupported")


def _check_type(name: str, value) -> None:
    """A GenerationConfig parameter of the right JSON type, by the field's annotation."""
    kind = next(f.type for f in dataclasses.fields(GenerationConfig) if f.name == name)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {
        "bool | str": isinstance(value, bool) or value == "never",
        "bool": isinstance(value, bool),
        "int": is_int, "int | None": is_int,
        "float": is_int or isinstance(value, float), "float | None": is_int or isinstance(value, float),
        "int | list[int] | None": is_int or (isinstance(value, list) and all(isinstance(t, int) for t in value)),
        "list[list[int]] | None": isinstance(value, list) and all(
            isinstance(s, list) and all(isinstance(t, int) for t in s) for s in value),
    }.get(kind, True)
    if not ok:
        wanted = {"bool | str": "true, false or \"never\"", "bool": "true or false"}.get(kind, kind.replace(" | None", ""))
        raise bad(f"'{name}' must be {wanted} (got {value!r})", name, "invalid_type")


def generation_config(body: dict, model, tokenizer, defaults: dict, max_new_tokens: int, n: int) -> GenerationConfig:
    """The request's GenerationConfig: server defaults < generation_config.json < the request."""
    request = {name: body[name] for name in CONFIG_FIELDS if body.get(name) is not None}
    for name, value in request.items():
        _check_type(name, value)
    temperature = number(body, "temperature", 0, 2)
    top_p = number(body, "top_p", 0, 1)
    if temperature is not None:
        request["temperature"] = temperature if temperature > 0 else 1.0
        request.setdefault("do_sample", temperature > 0)
    if top_p is not None:
        request["top_p"] = max(top_p, 1e-9)  # 0 keeps the most probable token only
    if "do_sample" not in request and (request.get("num_beams", 1) > 1 or request.get("penalty_alpha")):
        request["do_sample"] = False
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    values = {**SERVER_DEFAULTS, **{k: v for k, v in defaults.items() if k in names and v is not None}, **request,
              "max_new_tokens": max_new_tokens, "max_length": None}
    if values.get("num_beams", 1) > 1:
        values["num_return_sequences"] = n
    try:
        return resolve_config(model, GenerationConfig(**values), tokenizer=tokenizer,
                              ignore_eos=boolean(body, "ignore_eos"))
    except LmforgeError as exc:
        message = str(exc).rstrip(".")
        param = next((name for name in (*CONFIG_FIELDS, "temperature", "top_p") if message.startswith(name)), None)
        raise bad(message, param, "invalid_value") from None


def parse_common(body: dict, vocab_size: int) -> dict:
    n = number(body, "n", 1, MAX_N, integer=True, default=1)
    stream_options = body.get("stream_options")
    stream = boolean(body, "stream")
    if stream_options is not None and (not isinstance(stream_options, dict) or not stream):
        raise bad("'stream_options' must be an object, and only with stream=true", "stream_options")
    include_usage = bool(stream_options and stream_options.get("include_usage"))
    return dict(n=n, seed=number(body, "seed", integer=True), stops=_stops(body), stream=stream,
                include_usage=include_usage, logit_bias=_logit_bias(body, vocab_size),
                frequency_penalty=float(number(body, "frequency_penalty", -2, 2, default=0.0)),
                presence_penalty=float(number(body, "presence_penalty", -2, 2, default=0.0)))


def prompt_ids(prompt, tokenizer, vocab_size: int) -> tuple[list[list[int]], list[str]]:
    """The prompts of a completion request (a string, strings, token ids, or lists of token ids) as token ids,
    with their text. An empty prompt is one empty list (the caller puts the start token)."""
    def text_of(ids):
        return tokenizer.decode(ids, skip_special_tokens=False)

    def ids_of(item):
        if not item or any(isinstance(t, bool) or not isinstance(t, int) for t in item):
            raise bad("'prompt' token lists must be non-empty lists of integers", "prompt", "invalid_type")
        bad_ids = [t for t in item if not 0 <= t < vocab_size]
        if bad_ids:
            raise bad(f"'prompt' holds token id {bad_ids[0]}, outside the vocabulary of {vocab_size} tokens",
                      "prompt", "invalid_value")
        return list(item)

    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)], [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [tokenizer.encode(p) for p in prompt], list(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            ids = ids_of(prompt)
            return [ids], [text_of(ids)]
        if all(isinstance(p, list) for p in prompt):
            lists = [ids_of(p) for p in prompt]
            return lists, [text_of(ids) for ids in lists]
    raise bad("'prompt' must be a string, a list of strings, a list of token ids, or a list of such lists",
              "prompt", "invalid_type")


def chat_messages(body: dict) -> list[dict]:
    """The messages, with content parts of type "text" joined into one string."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"messages[{i}] must be an object with a 'role' string", "messages", "invalid_type")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"messages[{i}] has a content part that is not text; only text is supported",
                              "messages", "unsupported")
                parts.append(part["text"])
            content = "".join(parts)
        if content is not None and not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages", "invalid_type")
        out.append({k: v for k, v in {**message, "content": content}.items() if v is not None})
    return out


def context_error(prompt_tokens: int, max_tokens: int, context: int, asked: bool) -> ApiError:
    over = prompt_tokens + max_tokens - context
    if not asked or prompt_tokens >= context:
        return ApiError(422, f"the prompt is {prompt_tokens} tokens, {prompt_tokens - context + 1} more than the "
                             f"model's context of {context} tokens leaves for at least one new token; shorten it",
                        "prompt" if prompt_tokens >= context else "messages", "context_length_exceeded")
    return ApiError(422, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is {over} tokens more "
                         f"than the model's context of {context} tokens; lower max_tokens to at most "
                         f"{context - prompt_tokens}", "max_tokens", "context_length_exceeded")
