"""The public generation API: `generate`, `stream` and `Generator`.

    ckpt = lmforge.load("my-model")
    result = generate(ckpt, ["Once upon a time"], num_beams=4, max_new_tokens=40)
    print(result.completions[0][0].text)
    for piece in stream(ckpt, "Once upon a time", do_sample=True, top_p=0.9, seed=0):
        print(piece, end="")

Parameters are those of transformers' `GenerationConfig`; a model folder's
`generation_config.json` supplies the defaults, the model's config the bos/eos/pad ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.errors import LmforgeError
from lmforge.generate.diverse import contrastive_search, group_beam_search
from lmforge.generate.processors import GenerationConfig, resolve_lengths
from lmforge.generate.search import SearchOutput, StoppingCriteria, beam_search, greedy_or_sample, token_steps
from lmforge.generate.session import DecodingSession, open_session
from lmforge.generate.stopping import release_text, truncate_at_stop_string
from lmforge.generate.streaming import IncrementalDecoder

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | torch.Tensor | None


@dataclass
class Completion:
    """One generated continuation: new tokens only. `text` is cut before a stop string (the token
    that completed it stays in `token_ids`); `score` is described in `SearchOutput`."""

    text: str | None
    token_ids: list[int]
    score: float


@dataclass
class GenerationResult:
    prompt_token_ids: list[list[int]]
    completions: list[list[Completion]]  # per prompt, num_return_sequences each
    output: SearchOutput  # the padded tensors, for programmatic use
    strategy: str
    seconds: float
    config: GenerationConfig = field(repr=False)

    @property
    def new_tokens(self) -> int:
        return int(self.output.lengths.sum())

    def to_dict(self) -> dict:
        """`{"prompt_token_ids": [...], "completions": [...]}` for one prompt, a list of them for several."""
        items = [{"prompt_token_ids": ids,
                  "completions": [{"text": c.text, "token_ids": c.token_ids, "score": c.score} for c in comps]}
                 for ids, comps in zip(self.prompt_token_ids, self.completions)]
        return items[0] if len(items) == 1 else {"results": items}


def strategy_name(config: GenerationConfig) -> str:
    """Which search `config` asks for, decided as transformers does."""
    if config.num_beams == 1 and not config.do_sample and config.penalty_alpha and config.top_k > 1:
        return "contrastive"
    if config.num_beams == 1:
        return "sample" if config.do_sample else "greedy"
    if config.num_beam_groups > 1:
        return "group_beam"
    return "beam_sample" if config.do_sample else "beam"


def resolve_config(model, generation_config: GenerationConfig | dict | None = None, defaults: dict | None = None,
                   tokenizer=None, ignore_eos: bool = False, **kwargs) -> GenerationConfig:
    """`defaults` (a folder's generation_config.json) < `generation_config` < `kwargs`; special ids
    the config leaves unset come from the model config, then the tokenizer. Validated."""
    if isinstance(generation_config, GenerationConfig):
        config = generation_config
    else:
        config = GenerationConfig.from_dict({**(defaults or {}), **(generation_config or {})})
    config = config.update(**kwargs)
    model_config = getattr(model, "config", None)
    ids = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, name) is None:
            value = getattr(model_config, name, None)
            if value is None and tokenizer is not None:
                value = getattr(tokenizer, name, None)
            ids[name] = value
    if ignore_eos:
        ids["eos_token_id"] = None
    config = config.update(**ids)
    config.validate()
    if strategy_name(config) == "contrastive" and not 0 < config.penalty_alpha <= 1:
        raise LmforgeError(f"penalty_alpha must be in (0, 1] for contrastive search (got {config.penalty_alpha}).")
    if config.stop_strings and tokenizer is None:
        raise LmforgeError("stop_strings need a tokenizer to decode the generated text; pass tokenizer=...")
    return config


def start_token(config: GenerationConfig, tokenizer=None) -> int:
    """The token an unconditional generation starts from: BOS, else EOS (GPT-2 uses one for both)."""
    for value in (config.bos_token_id, config.eos_token_ids[0] if config.eos_token_ids else None,
                  getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    raise LmforgeError("there is no prompt and the model has neither a BOS nor an EOS token to start from; "
                       "give a prompt")


def tokenize_prompts(inputs: Prompts, tokenizer, config: GenerationConfig, add_bos: bool = False) -> list[list[int]]:
    """Prompts as lists of token ids; an absent or empty prompt becomes the start token."""
    if inputs is None:
        inputs = [[]]
    elif isinstance(inputs, str):
        inputs = [inputs]
    elif isinstance(inputs, torch.Tensor):
        inputs = inputs.tolist() if inputs.dim() == 2 else [inputs.tolist()]
    elif inputs and isinstance(inputs[0], int):
        inputs = [list(inputs)]
    prompts = []
    for item in inputs:
        if isinstance(item, str):
            if tokenizer is None:
                raise LmforgeError("text prompts need a tokenizer; pass tokenizer=... or token ids")
            item = tokenizer.encode(item, add_bos=add_bos) if item else []
        prompts.append([int(t) for t in item] or [start_token(config, tokenizer)])
    return prompts


def fit_prompts(prompts: list[list[int]], limit: int | None, max_new_tokens: int, truncate: str | None) -> list[list[int]]:
    """Check that every prompt leaves room for `max_new_tokens`; with truncate="left" keep its end."""
    if limit is None:
        return prompts
    if limit < 1:
        raise LmforgeError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's context "
                           f"({limit + max_new_tokens} tokens); lower max_new_tokens")
    longest = max(len(p) for p in prompts)
    if longest <= limit:
        return prompts
    if truncate == "left":
        return [p[-limit:] for p in prompts]
    raise LmforgeError(f"the prompt ({longest} tokens) plus max_new_tokens ({max_new_tokens}) is longer than the "
                       f"model's context ({limit + max_new_tokens} tokens); shorten it, lower max_new_tokens, "
                       "or truncate the prompt on the left (--truncate left)")


def left_pad(prompts: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _pad_id(config: GenerationConfig) -> int:
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    return config.eos_token_ids[0] if config.eos_token_ids else 0


def _beam_fill(config: GenerationConfig) -> int:
    """transformers' filler after a finished beam: pad (unless 0/None, then the first EOS), else -1."""
    if not config.eos_token_ids:
        return -1
    return config.pad_token_id or config.eos_token_ids[0]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _unpack(model, tokenizer, defaults):
    """Accept a Checkpoint (`lmforge.load`) as well as a bare model."""
    if hasattr(model, "model") and hasattr(model, "generation_config") and not isinstance(model, torch.nn.Module):
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        defaults = defaults if defaults is not None else model.generation_config
        model = model.model
    return model, tokenizer, defaults


class _Prepared:
    """A started session: everything a search needs, after config, prompts and lengths are resolved."""

    def __init__(self, model, inputs: Prompts, config: GenerationConfig, tokenizer, attention_mask,
                 truncate: str | None, add_bos: bool, output_hidden: bool, compile: bool = False):
        self.session: DecodingSession = open_session(model, output_hidden=output_hidden,
                                                     decoder_start_token_id=config.decoder_start_token_id,
                                                     compile=compile)
        device = _model_device(model)
        pad = _pad_id(config)
        padded = isinstance(inputs, torch.Tensor) and inputs.dim() == 2 and attention_mask is not None
        if padded:  # a left-padded batch is used as given (its pad ids are what processors see)
            self.prompts = [row[m.bool()].tolist() for row, m in zip(inputs, attention_mask)]
            width = inputs.shape[1]
        else:
            self.prompts = tokenize_prompts(inputs, tokenizer, config, add_bos)
            width = max(len(p) for p in self.prompts)
        # lengths count output-side tokens: the prompt, or an encoder-decoder's decoder start token
        output_prefix = 1 if getattr(model, "is_encoder_decoder", False) else width
        _, max_length = resolve_lengths(config, output_prefix)
        self.max_new_tokens = max_length - output_prefix
        if self.max_new_tokens < 1:
            raise LmforgeError(f"max_length ({max_length}) leaves no room after the prompt ({output_prefix} tokens); "
                               "set max_new_tokens instead")
        limit = self.session.prompt_limit(self.max_new_tokens)
        if padded and (limit is None or width <= limit):
            ids, mask = inputs.to(device), attention_mask.to(device)
        else:
            self.prompts = fit_prompts(self.prompts, limit, self.max_new_tokens, truncate)
            ids, mask = left_pad(self.prompts, pad, device)
        self.logits = self.session.start(ids, mask, self.max_new_tokens)
        decode = (lambda t: tokenizer.decode(t, skip_special_tokens=True)) if tokenizer is not None else None
        self.stopping = StoppingCriteria(self.session.prefix_ids.shape[1], self.max_new_tokens, config.eos_token_ids,
                                         config.stop_strings, decode)


def _generator(seed: int | None, device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def generate(model, inputs: Prompts = None, generation_config: GenerationConfig | dict | None = None, *,
             tokenizer=None, attention_mask: torch.Tensor | None = None, seed: int | None = None,
             ignore_eos: bool = False, truncate: str | None = None, add_bos: bool = False,
             defaults: dict | None = None, compile: bool = False, **kwargs) -> GenerationResult:
    """Generate continuations of `inputs` (text, texts, token-id lists, or a left-padded (B, T) tensor
    with its `attention_mask`; None: unconditionally from the BOS/EOS token).

    `generation_config` and `kwargs` carry transformers' `GenerationConfig` parameters. `seed` makes
    sampling reproducible without touching the global RNG; `ignore_eos` never stops at EOS;
    `truncate="left"` drops the start of a prompt too long for the context. `compile=True` (decoder-only
    models) runs each decoding step as one graph compiled by torch.compile: faster per token, but the
    first call for a new shape spends seconds to tens of seconds compiling (see `compiled.compiled_step`).
    """
    model, tokenizer, defaults = _unpack(model, tokenizer, defaults)
    config = resolve_config(model, generation_config, defaults, tokenizer, ignore_eos=ignore_eos, **kwargs)
    strategy = strategy_name(config)
    began = time.perf_counter()
    with torch.inference_mode():
        prep = _Prepared(model, inputs, config, tokenizer, attention_mask, truncate, add_bos,
                         output_hidden=strategy == "contrastive", compile=compile)
        session, logits, stopping = prep.session, prep.logits, prep.stopping
        try:
            if strategy in ("greedy", "sample"):
                out = greedy_or_sample(session, logits, config, stopping, _pad_id(config),
                                       _generator(seed, logits.device))
            elif strategy == "contrastive":
                out = contrastive_search(session, logits, config, stopping, _pad_id(config))
            elif strategy == "group_beam":
                out = group_beam_search(session, logits, config, stopping, _beam_fill(config))
            else:
                out = beam_search(session, logits, config, stopping, _beam_fill(config),
                                  _generator(seed, logits.device))
        finally:
            session.close()
    seconds = time.perf_counter() - began
    return GenerationResult(prep.prompts, _completions(out, len(prep.prompts), tokenizer, config), out, strategy,
                            seconds, config)


def _completions(out: SearchOutput, n_prompts: int, tokenizer, config: GenerationConfig) -> list[list[Completion]]:
    rows = []
    for seq, length, score in zip(out.sequences.tolist(), out.lengths.tolist(), out.scores.tolist()):
        ids = seq[:length]
        text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else None
        if text is not None and config.stop_strings:
            text = truncate_at_stop_string(text, config.stop_strings)
        rows.append(Completion(text, ids, score))
    per = len(rows) // n_prompts
    return [rows[i * per:(i + 1) * per] for i in range(n_prompts)]


def stream(model, prompt: str | Sequence[int] | None = None, generation_config: GenerationConfig | dict | None = None,
           *, tokenizer=None, seed: int | None = None, ignore_eos: bool = False, truncate: str | None = None,
           add_bos: bool = False, defaults: dict | None = None, compile: bool = False, **kwargs) -> Iterator[str]:
    """Yield the text of one greedy or sampled continuation piece by piece as tokens are decoded.

    A character split over several tokens is yielded once complete; text that could be the start of
    a stop string is held back until it is not, and generation ends before a stop string.
    """
    model, tokenizer, defaults = _unpack(model, tokenizer, defaults)
    if tokenizer is None:
        raise LmforgeError("streaming needs a tokenizer to turn tokens into text; pass tokenizer=...")
    config = resolve_config(model, generation_config, defaults, tokenizer, ignore_eos=ignore_eos, **kwargs)
    if strategy_name(config) not in ("greedy", "sample") or config.num_return_sequences != 1:
        raise LmforgeError("streaming works with greedy decoding or sampling and one sequence; "
                           "drop num_beams/penalty_alpha/num_return_sequences or do not stream")
    if prompt is not None and not isinstance(prompt, str):
        prompt = [list(prompt)]
    stops = [config.stop_strings] if isinstance(config.stop_strings, str) else list(config.stop_strings or [])
    with torch.inference_mode():
        prep = _Prepared(model, prompt, config, tokenizer, None, truncate, add_bos, output_hidden=False,
                         compile=compile)
        decoder = IncrementalDecoder(tokenizer.decode, context_ids=prep.prompts[0])
        held = ""
        steps = token_steps(prep.session, prep.logits, config, prep.stopping, _pad_id(config),
                            _generator(seed, prep.logits.device))
        for tokens, _, _ in steps:
            held += decoder.push(int(tokens[0]))
            text, stopped = release_text(held, stops)
            if text:
                yield text
            held = held[len(text):]
            if stopped:
                return
        text, _ = release_text(held + decoder.flush(), stops, final=True)
        if text:
            yield text


class Generator:
    """A model, its tokenizer and its default generation parameters, ready to generate and stream.

        gen = Generator.from_pretrained("my-model", max_new_tokens=50)
        gen("Hello", do_sample=True, top_p=0.9).completions[0][0].text
    """

    def __init__(self, model, tokenizer=None, generation_config: GenerationConfig | dict | None = None, **defaults):
        model, tokenizer, folder_defaults = _unpack(model, tokenizer, None)
        self.model, self.tokenizer = model, tokenizer
        if isinstance(generation_config, GenerationConfig):
            generation_config = generation_config.to_dict()
        self.defaults = {**(folder_defaults or {}), **(generation_config or {}), **defaults}

    @classmethod
    def from_pretrained(cls, path, **defaults) -> Generator:
        from lmforge.hub.hf import load_folder

        return cls(load_folder(path), **defaults)

    def __call__(self, inputs: Prompts = None, **kwargs) -> GenerationResult:
        return self.generate(inputs, **kwargs)

    def generate(self, inputs: Prompts = None, **kwargs) -> GenerationResult:
        return generate(self.model, inputs, tokenizer=self.tokenizer, defaults=self.defaults, **kwargs)

    def stream(self, prompt: str | Sequence[int] | None = None, **kwargs) -> Iterator[str]:
        return stream(self.model, prompt, tokenizer=self.tokenizer, defaults=self.defaults, **kwargs)
