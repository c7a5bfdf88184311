"""Logits processors and warpers with the semantics of transformers' generation utilities.

Every processor is called as ``processor(input_ids, scores) -> scores`` where ``input_ids`` is the
whole sequence so far, shape (batch, seq_len) (prompt included; the decoder sequence for
encoder-decoder models), and ``scores`` are float logits of shape (batch, vocab). Processors return
a new tensor and never modify ``scores``. Filtered entries are set to ``-inf``.

``build_processors`` assembles them from a :class:`GenerationConfig` in the order transformers'
``GenerationMixin._get_logits_processor`` uses, so the same config gives the same distribution.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from lmforge.errors import LmforgeError

TokenIds = int | Sequence[int]


class LogitsProcessor(Protocol):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


def _id_list(ids: TokenIds | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return ids.flatten().tolist()
    return [ids] if isinstance(ids, int) else list(ids)


def _vocab_mask(ids: list[int], scores: torch.Tensor) -> torch.Tensor:
    """Boolean (vocab,) mask of ``ids``; ids outside the vocabulary are ignored, as in transformers."""
    vocab_size = scores.shape[-1]
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=scores.device)
    mask[[i for i in ids if 0 <= i < vocab_size]] = True
    return mask


def _force(scores: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Scores that allow only ``ids`` (logit 0) and nothing else."""
    forced = torch.full_like(scores, -math.inf)
    forced[:, ids] = 0
    return forced


class TemperatureLogitsWarper:
    """Divide the logits by ``temperature`` (> 0); below 1 sharpens, above 1 flattens."""

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise LmforgeError(
                f"temperature must be > 0 (got {temperature}); use do_sample=False for greedy."
            )
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper:
    """Keep the ``top_k`` highest logits; every token tied with the k-th one is kept too."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if top_k <= 0:
            raise LmforgeError(
                f"top_k must be a positive integer (got {top_k}); top_k=0 disables the filter."
            )
        self.top_k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth_largest = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth_largest, -math.inf)


class TopPLogitsWarper:
    """Nucleus filtering: keep the smallest set of most probable tokens whose mass reaches ``top_p``.

    Tokens are ranked with ``torch.sort`` exactly as transformers does, so when logits tie at the
    nucleus boundary the same tied tokens survive as there.
    """

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        if not 0 <= top_p <= 1:
            raise LmforgeError(f"top_p must be in (0, 1] (got {top_p}).")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop the low tail whose total mass stays within 1 - top_p.
        sorted_to_remove = cumulative_probs <= 1 - self.top_p
        sorted_to_remove[..., -self.min_tokens_to_keep :] = False
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, -math.inf)


class TypicalLogitsWarper:
    """Locally typical sampling: keep tokens whose surprisal is closest to the entropy, up to ``mass``."""

    def __init__(self, mass: float = 0.9, min_tokens_to_keep: int = 1):
        if not 0 < mass < 1:
            raise LmforgeError(f"typical_p must be in (0, 1) to filter (got {mass}); 1.0 disables it.")
        self.mass = float(mass)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(scores, dim=-1)
        entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)
        distance = (-log_probs - entropy).abs()
        sorted_distance, sorted_indices = torch.sort(distance, descending=False)
        cumulative_probs = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
        last_kept = (cumulative_probs < self.mass).sum(dim=1).clamp_(max=scores.shape[-1] - 1)
        sorted_to_remove = sorted_distance > sorted_distance.gather(1, last_kept.view(-1, 1))
        sorted_to_remove[..., : self.min_tokens_to_keep] = False
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, -math.inf)


class MinPLogitsWarper:
    """Keep tokens whose probability is at least ``min_p`` times that of the most probable token."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not 0 <= min_p <= 1:
            raise LmforgeError(f"min_p must be in [0, 1] (got {min_p}).")
        self.min_p = float(min_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        to_remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        k = min(self.min_tokens_to_keep, probs.shape[-1])
        to_remove.scatter_(-1, torch.topk(probs, k, dim=-1).indices, False)
        return scores.masked_fill(to_remove, -math.inf)


class RepetitionPenaltyLogitsProcessor:
    """CTRL's repetition penalty on every token present in ``input_ids``: positive logits are
    divided by ``penalty``, negative ones multiplied, once per token however often it occurs.

    ``prompt_ignore_length`` (an int, or one int per row) skips that many leading tokens, which is
    how transformers keeps left padding out of the penalty.
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | torch.Tensor | None = None):
        if not penalty > 0:
            raise LmforgeError(f"repetition_penalty must be > 0 (got {penalty}); 1.0 means no penalty.")
        self.penalty = float(penalty)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab_size = scores.shape[-1]
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            input_ids = input_ids[:, ignore:]
        elif ignore is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            input_ids = input_ids.masked_fill(positions < ignore.to(input_ids.device)[:, None], vocab_size)
        # One spare column absorbs ignored positions and ids beyond the output vocabulary.
        present = torch.zeros(scores.shape[0], vocab_size + 1, dtype=torch.bool, device=scores.device)
        present.scatter_(1, input_ids.clamp(max=vocab_size), True)
        penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(present[:, :vocab_size], penalized, scores)


class NoRepeatNGramLogitsProcessor:
    """Ban every token that would complete an n-gram already present in ``input_ids``.

    Vectorised: the last n-1 tokens are compared with every window of the sequence at once, so a
    step costs O(seq_len * n) tensor work per row and no Python loop over positions or beams.
    """

    def __init__(self, ngram_size: int):
        if ngram_size <= 0:
            raise LmforgeError(f"no_repeat_ngram_size must be a positive integer (got {ngram_size}).")
        self.ngram_size = int(ngram_size)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n, seq_len = self.ngram_size, input_ids.shape[1]
        if seq_len < n:
            return scores
        vocab_size = scores.shape[-1]
        windows = input_ids.unfold(1, n, 1)  # (batch, seq_len - n + 1, n)
        suffix = input_ids[:, seq_len - n + 1 :]  # the n-1 tokens a new n-gram would start with
        matches = (windows[..., :-1] == suffix[:, None, :]).all(dim=-1)
        # Windows that do not match point at a spare column past the vocabulary.
        banned = torch.zeros(scores.shape[0], vocab_size + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size), True)
        return scores.masked_fill(banned[:, :vocab_size], -math.inf)


class NoBadWordsLogitsProcessor:
    """Forbid token sequences: a single token is always banned; the last token of a longer sequence
    is banned when the sequence so far ends with the rest of it. ``[eos]`` alone is never banned."""

    def __init__(self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: TokenIds | None = None):
        if (
            isinstance(bad_words_ids, (str, bytes))
            or not bad_words_ids
            or any(not seq or any(not isinstance(t, int) or t < 0 for t in seq) for seq in bad_words_ids)
        ):
            raise LmforgeError(
                f"bad_words_ids must be a non-empty list of non-empty token-id lists (got {bad_words_ids!r})."
            )
        eos = [] if eos_token_id is None else _id_list(eos_token_id)
        sequences = [list(seq) for seq in bad_words_ids if not (len(seq) == 1 and seq[0] in eos)]
        self.single_ids = [seq[0] for seq in sequences if len(seq) == 1]
        by_prefix_length: dict[int, list[list[int]]] = {}
        for seq in sequences:
            if len(seq) > 1:
                by_prefix_length.setdefault(len(seq) - 1, []).append(seq)
        self.groups = [
            (torch.tensor([seq[:-1] for seq in group]), torch.tensor([seq[-1] for seq in group]))
            for group in by_prefix_length.values()
        ]
        self.max_id = max((t for seq in sequences for t in seq), default=-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab_size = scores.shape[-1]
        if self.max_id >= vocab_size:
            raise LmforgeError(
                f"bad_words_ids holds token id {self.max_id}, outside the model's vocabulary of {vocab_size}."
            )
        banned = torch.zeros(scores.shape[0], vocab_size + 1, dtype=torch.bool, device=scores.device)
        banned[:, self.single_ids] = True
        for prefixes, last_tokens in self.groups:
            prefix_length = prefixes.shape[1]
            if prefix_length > input_ids.shape[1]:
                continue
            prefixes, last_tokens = prefixes.to(input_ids.device), last_tokens.to(input_ids.device)
            matches = (input_ids[:, None, -prefix_length:] == prefixes).all(dim=-1)  # (batch, group)
            banned.scatter_(1, torch.where(matches, last_tokens, vocab_size), True)
        return scores.masked_fill(banned[:, :vocab_size], -math.inf)


class FrequencyPresencePenaltyLogitsProcessor:
    """OpenAI's additive penalties on the tokens generated so far (after the first ``prompt_length`` of
    ``input_ids``): ``frequency_penalty`` times the token's count plus ``presence_penalty`` if it occurs."""

    def __init__(self, prompt_length: int, frequency_penalty: float = 0.0, presence_penalty: float = 0.0):
        self.prompt_length = prompt_length
        self.frequency, self.presence = float(frequency_penalty), float(presence_penalty)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length:]
        vocab_size = scores.shape[-1]
        counts = torch.zeros(scores.shape[0], vocab_size + 1, dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, generated.clamp(max=vocab_size), torch.ones_like(generated, dtype=scores.dtype))
        counts = counts[:, :vocab_size]
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LogitBiasLogitsProcessor:
    """Add a fixed bias to chosen token ids (OpenAI's ``logit_bias``: -100 bans a token, 100 forces it)."""

    def __init__(self, bias: dict[int, float]):
        self.ids = torch.tensor(list(bias), dtype=torch.long)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(scores.shape[-1], dtype=scores.dtype, device=scores.device)
        bias[self.ids.to(scores.device)] = self.values.to(device=scores.device, dtype=scores.dtype)
        return scores + bias


class MinLengthLogitsProcessor:
    """Forbid the EOS id(s) while the whole sequence (prompt included) is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_token_id: TokenIds):
        self.min_length = min_length
        self.eos_token_ids = _id_list(eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] >= self.min_length:
            return scores
        return scores.masked_fill(_vocab_mask(self.eos_token_ids, scores), -math.inf)


class MinNewTokensLengthLogitsProcessor:
    """Forbid the EOS id(s) until ``min_new_tokens`` tokens follow the first ``prompt_length_to_skip``."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id: TokenIds):
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_ids = _id_list(eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores
        return scores.masked_fill(_vocab_mask(self.eos_token_ids, scores), -math.inf)


class ForcedBOSTokenLogitsProcessor:
    """Force ``bos_token_id`` as the first generated token, i.e. when the sequence has length 1
    (the decoder start token of an encoder-decoder model)."""

    def __init__(self, bos_token_id: int):
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return _force(scores, [self.bos_token_id]) if input_ids.shape[-1] == 1 else scores


class ForcedEOSTokenLogitsProcessor:
    """Force an EOS id as the last token: when the sequence is one short of ``max_length``."""

    def __init__(self, max_length: int, eos_token_id: TokenIds):
        self.max_length = max_length
        self.eos_token_ids = _id_list(eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return _force(scores, self.eos_token_ids) if input_ids.shape[-1] == self.max_length - 1 else scores


@dataclasses.dataclass
class GenerationConfig:
    """Decoding parameters with the names and defaults of transformers' ``GenerationConfig``.

    Lengths count the whole sequence (prompt included for decoder-only models) except the ``*_new_*``
    ones; ``max_new_tokens`` wins over ``max_length``, and with neither set 20 new tokens are made
    (see :func:`resolve_lengths`).
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    early_stopping: bool | str = False
    stop_strings: str | list[str] | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_beam_groups: int = 1
    penalty_alpha: float | None = None
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    typical_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    diversity_penalty: float = 0.0
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationConfig:
        """Build from a dict; unknown keys (``transformers_version``, …) are ignored and ``None`` means default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    @classmethod
    def from_json_file(cls, path: str | Path) -> GenerationConfig:
        """Read a ``generation_config.json`` as written by transformers."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LmforgeError(f"Generation config {path} does not exist; check the path.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LmforgeError(
                f"Generation config {path} is not valid JSON ({e}); fix or delete it."
            ) from None
        if not isinstance(values, dict):
            raise LmforgeError(f"Generation config {path} must hold a JSON object; fix or delete it.")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, **changes: Any) -> GenerationConfig:
        """A copy with ``changes`` applied; an unknown name is a user error."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise LmforgeError(f"Unknown generation parameter(s) {', '.join(unknown)}; check the spelling.")
        return dataclasses.replace(self, **changes)

    @property
    def eos_token_ids(self) -> list[int]:
        return [] if self.eos_token_id is None else _id_list(self.eos_token_id)

    def validate(self) -> None:
        """Raise :class:`LmforgeError` naming the first inconsistent parameter."""
        beam_search = self.num_beams > 1
        checks = [
            (
                self.max_new_tokens is not None and self.max_new_tokens <= 0,
                f"max_new_tokens must be > 0 (got {self.max_new_tokens}).",
            ),
            (
                self.early_stopping not in (True, False, "never"),
                f"early_stopping must be True, False or 'never' (got {self.early_stopping!r}).",
            ),
            (self.num_beams < 1, f"num_beams must be at least 1 (got {self.num_beams})."),
            (self.num_beam_groups < 1, f"num_beam_groups must be at least 1 (got {self.num_beam_groups})."),
            (self.temperature < 0, f"temperature must be > 0 (got {self.temperature})."),
            (
                self.do_sample and self.temperature == 0,
                "temperature=0 is not valid with do_sample=True; set do_sample=False for greedy decoding.",
            ),
            (not 0 < self.top_p <= 1, f"top_p must be in (0, 1] (got {self.top_p})."),
            (self.top_k < 0, f"top_k must be >= 0 (got {self.top_k}); 0 disables top-k filtering."),
            (not 0 < self.typical_p <= 1, f"typical_p must be in (0, 1] (got {self.typical_p})."),
            (
                self.min_p is not None and not 0 <= self.min_p <= 1,
                f"min_p must be in [0, 1] (got {self.min_p}).",
            ),
            (
                self.repetition_penalty <= 0,
                f"repetition_penalty must be > 0 (got {self.repetition_penalty}); 1.0 means no penalty.",
            ),
            (
                self.no_repeat_ngram_size < 0,
                f"no_repeat_ngram_size must be >= 0 (got {self.no_repeat_ngram_size}); 0 disables it.",
            ),
            (
                self.num_return_sequences < 1,
                f"num_return_sequences must be at least 1 (got {self.num_return_sequences}).",
            ),
            (
                not beam_search and not self.do_sample and self.num_return_sequences > 1,
                (
                    f"num_return_sequences={self.num_return_sequences} needs do_sample=True or num_beams >= "
                    f"{self.num_return_sequences}; greedy decoding returns one sequence."
                ),
            ),
            (
                beam_search and self.num_return_sequences > self.num_beams,
                f"num_return_sequences ({self.num_return_sequences}) must not exceed num_beams ({self.num_beams}).",
            ),
            (
                self.num_beam_groups >= 1 and self.num_beams % self.num_beam_groups != 0,
                f"num_beams ({self.num_beams}) must be divisible by num_beam_groups ({self.num_beam_groups}).",
            ),
            (
                self.num_beam_groups > 1 and self.do_sample,
                "Diverse (group) beam search cannot sample; set do_sample=False or num_beam_groups=1.",
            ),
            (
                self.diversity_penalty != 0 and self.num_beam_groups == 1,
                f"diversity_penalty={self.diversity_penalty} needs num_beam_groups > 1 to have any effect.",
            ),
        ]
        for failed, message in checks:
            if failed:
                raise LmforgeError(message)


def as_generation_config(config: Any) -> GenerationConfig:
    """A :class:`GenerationConfig` from any object with transformers' attribute names (such as
    ``transformers.GenerationConfig``); unset (``None``) attributes take transformers' defaults."""
    names = [f.name for f in dataclasses.fields(GenerationConfig)]
    return GenerationConfig.from_dict({name: getattr(config, name, None) for name in names})


def resolve_lengths(config: GenerationConfig, prompt_len: int) -> tuple[int, int]:
    """(min_length, max_length) of the whole sequence, as transformers' ``generate`` resolves them:
    ``max_new_tokens`` / ``min_new_tokens`` count from ``prompt_len`` and take precedence; an unset
    ``max_length`` means 20 new tokens. ``prompt_len`` is the decoder input length for encoder-decoders.
    """
    config = as_generation_config(config)
    if config.max_new_tokens is not None:
        max_length = prompt_len + config.max_new_tokens
    elif config.max_length is not None:
        max_length = config.max_length
    else:
        max_length = prompt_len + 20
    if config.min_new_tokens is not None:
        min_length = prompt_len + config.min_new_tokens
    else:
        min_length = config.min_length
    return min_length, max_length


def build_processors(
    config: GenerationConfig, prompt_len: int, attention_mask: torch.Tensor | None = None
) -> tuple[list[LogitsProcessor], list[LogitsProcessor]]:
    """(processors, warpers) for ``config``, in transformers' order; apply processors then warpers.

    ``config`` may be any object with transformers' attribute names (see :func:`as_generation_config`).
    Warpers are empty unless ``do_sample``. ``attention_mask`` (batch, prompt_len), when given, keeps
    left padding out of the repetition penalty as transformers does.
    """
    config = as_generation_config(config)
    eos = config.eos_token_ids
    min_length, max_length = resolve_lengths(config, prompt_len)
    processors: list[LogitsProcessor] = []
    if config.repetition_penalty != 1.0:
        padding = None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, padding))
    if config.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
    if eos and min_length > 0:
        # transformers adds MinLength and MinNewTokens with the same resolved bound; one suffices.
        processors.append(MinLengthLogitsProcessor(min_length, eos))
    if config.forced_bos_token_id is not None:
        processors.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
    if config.forced_eos_token_id is not None:
        processors.append(ForcedEOSTokenLogitsProcessor(max_length, config.forced_eos_token_id))

    warpers: list[LogitsProcessor] = []
    if not config.do_sample:
        return processors, warpers
    # Beam sampling keeps one token beyond the EOS ids so that every beam can continue.
    keep = (len(eos) + 1 if eos else 2) if config.num_beams > 1 else 1
    if config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k != 0:
        warpers.append(TopKLogitsWarper(config.top_k, min_tokens_to_keep=keep))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p, min_tokens_to_keep=keep))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(config.min_p, min_tokens_to_keep=keep))
    if config.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(config.typical_p, min_tokens_to_keep=keep))
    return processors, warpers


def apply_processors(
    processors: Sequence[LogitsProcessor], input_ids: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """Run ``processors`` in order."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores
