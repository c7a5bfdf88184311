"""Preference data for reward models and DPO: (prompt, chosen, rejected) pairs, read and tokenized.

Where pairs come from (a *preference spec*; several joined with "+" are read one after the other):

    hh-rlhf-helpful-base[:split]   a named set (also hh-rlhf-helpful-online, hh-rlhf-helpful-rejection-sampled,
                                   hh-rlhf-harmless-base): under $LMFORGE_DATA, else fetched from its public source
    prefs.jsonl                    one record per line (also .json, .csv, .tsv, .parquet, gzipped), each one of:
        {"prompt", "chosen", "rejected"[, "margin"]}   a pair; margin (default 0) enters the reward model's loss
        {"chosen", "rejected"}                         two whole transcripts (Anthropic's HH-RLHF format), split
                                                       into prompt and responses at the first "\\n\\nAssistant:"
                                                       after the last "\\n\\nHuman:"
        {"prompt", "responses": [best, ..., worst]}    a ranking of K responses: all K(K-1)/2 pairs, each weighted
                                                       2/(K(K-1)) so that a prompt counts as one example (InstructGPT)

Pairs whose two responses are identical carry no preference and are dropped (counted); HH-RLHF has a few, and a
few whose two transcripts do not share one prompt (one side ends with an unanswered Human turn), also dropped.

`PreferenceEncoder` then tokenizes them as a model family expects and applies the length limits: a response
longer than max_response_length is cut at its end, then the prompt is cut from its left (its start goes, the
question nearest the response stays) until prompt + the longer response fit max_length; `too_long` drop or
error refuses such pairs instead. Every change is counted for one sentence in the log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.pairs import right_pad  # noqa: F401  (the preference tasks pad pairs as data/pairs.py pads rows)
from lmforge.data.public import named_file
from lmforge.data.records import iter_records, record_format
from lmforge.errors import LmforgeError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TOO_LONG = ("truncate", "drop", "error")
NAMED = ("hh-rlhf-helpful-base", "hh-rlhf-helpful-online", "hh-rlhf-helpful-rejection-sampled",
         "hh-rlhf-harmless-base")
DEFAULT_SPLIT = "train"


class Unsplittable(LmforgeError):
    """Two transcripts that do not share one prompt (HH-RLHF has a few: one side ends with an unanswered Human
    turn); such a pair is dropped and counted."""


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    weight: float = 1.0  # pairs from a ranking of K share one example's weight
    id: str = ""


@dataclass
class PreferenceSet:
    description: str
    pairs: list[PreferencePair]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)


def split_transcript(text: str) -> tuple[str, str] | None:
    """(prompt, response) of an HH-RLHF transcript: the prompt runs up to and including the first
    "\\n\\nAssistant:" after the last "\\n\\nHuman:"; None when the text has no such turn."""
    human = text.rfind(HUMAN)
    if human < 0:
        return None
    turn = text.find(ASSISTANT, human)
    if turn < 0:
        return None
    cut = turn + len(ASSISTANT)
    return text[:cut], text[cut:]


def ranking_pairs(prompt: str, responses: list[str], example_id: str, margin: float = 0.0) -> list[PreferencePair]:
    """All K(K-1)/2 pairs of a ranking (best first), each weighted 2/(K(K-1))."""
    k = len(responses)
    weight = 2.0 / (k * (k - 1))
    return [PreferencePair(prompt, responses[i], responses[j], margin, weight, f"{example_id}:{i}>{j}")
            for i in range(k) for j in range(i + 1, k)]


def pairs_of_record(record: dict, where: str, index: int) -> list[PreferencePair]:
    """The pairs one record holds (see the module docstring), or an error naming the line and the fields."""
    example_id = str(record.get("id", index))
    margin = record.get("margin", 0.0)
    if margin is None:
        margin = 0.0
    if not isinstance(margin, (int, float)) or isinstance(margin, bool):
        try:
            margin = float(margin)
        except (TypeError, ValueError):
            raise LmforgeError(f"{where}: margin must be a number, got {margin!r}") from None
    if "responses" in record:
        responses = record["responses"]
        if isinstance(responses, str):
            try:
                responses = json.loads(responses)
            except json.JSONDecodeError:
                responses = None
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise LmforgeError(f"{where}: responses must be a list of at least two texts, best first")
        if not isinstance(record.get("prompt"), str):
            raise LmforgeError(f"{where} has a ranking (responses) but no prompt field; its fields are: "
                               f"{', '.join(record)}")
        return ranking_pairs(record["prompt"], responses, example_id, float(margin))
    missing = [name for name in ("chosen", "rejected") if not isinstance(record.get(name), str)]
    if missing:
        raise LmforgeError(f"{where} lacks the field(s) {', '.join(missing)}; a preference record needs prompt, "
                           "chosen and rejected (or chosen and rejected transcripts, or prompt and responses); its "
                           f"fields are: {', '.join(record) or 'none'}")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record and record["prompt"] is not None:
        if not isinstance(record["prompt"], str):
            raise LmforgeError(f"{where}: prompt must be a text, got {type(record['prompt']).__name__}")
        return [PreferencePair(record["prompt"], chosen, rejected, float(margin), 1.0, example_id)]
    parts = split_transcript(chosen), split_transcript(rejected)
    if parts[0] is None and parts[1] is None:
        raise LmforgeError(f"{where} has no prompt field and its chosen/rejected texts are not Human/Assistant "
                           "transcripts; add a prompt field")
    if parts[0] is None or parts[1] is None or parts[0][0] != parts[1][0]:
        raise Unsplittable(where)
    return [PreferencePair(parts[0][0], parts[0][1], parts[1][1], float(margin), 1.0, example_id)]


def resolve_spec(spec: str) -> tuple[Path, str]:
    """(the file, its description) of one preference spec."""
    name, _, split = spec.partition(":")
    if name in NAMED:
        split = split or DEFAULT_SPLIT
        path = named_file(name, f"{split}.jsonl")
        if not path.is_file():
            present = sorted(p.stem for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
            hint = f"; it holds {', '.join(f'{name}:{s}' for s in present)}" if present else ""
            raise LmforgeError(f"{path} does not exist{hint}")
        return path, f"{name}:{split}"
    path = Path(spec)
    if not path.is_file():
        raise LmforgeError(f"preference file {path} does not exist; give a .jsonl file or a named set "
                           f"({', '.join(NAMED)}, optionally :split)")
    if record_format(path) is None:
        raise LmforgeError(f"cannot tell the format of {path} from its suffix; use .jsonl, .json, .csv, .tsv or "
                           ".parquet (optionally .gz)")
    return path, spec


def load_preferences(spec: str) -> PreferenceSet:
    """The pairs of a preference spec (see the module docstring), identical pairs dropped and noted."""
    pairs: list[PreferencePair] = []
    descriptions, identical, unsplittable = [], 0, 0
    for part in [s.strip() for s in spec.split("+") if s.strip()]:
        path, description = resolve_spec(part)
        descriptions.append(description)
        for index, (where, record) in enumerate(iter_records(path)):
            try:
                found = pairs_of_record(record, where, index)
            except Unsplittable:
                unsplittable += 1
                continue
            for pair in found:
                if pair.chosen == pair.rejected:
                    identical += 1
                else:
                    pairs.append(pair)
    description = " + ".join(descriptions)
    notes = [f"dropped {identical} pair(s) of {description} whose chosen and rejected responses are identical"] \
        if identical else []
    if unsplittable:
        notes.append(f"dropped {unsplittable} pair(s) of {description} whose two transcripts do not split into one "
                     "prompt (one side ends with a turn the other lacks)")
    if not pairs:
        raise LmforgeError(f"{description} holds no usable preference pairs")
    return PreferenceSet(description, pairs, notes)


# ---- tokens -------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    prompt: list[int]  # decoder-only: [BOS] prompt; encoder-decoder: the encoder input ([BOS] prompt EOS)
    chosen: list[int]  # the response tokens (with EOS when the encoder adds it)
    rejected: list[int]
    margin: float = 0.0
    weight: float = 1.0


@dataclass
class PreferenceLengths:
    """What the length limits changed, for one sentence in the log."""

    truncated_prompts: int = 0
    truncated_responses: int = 0
    dropped: int = 0

    def notes(self, description: str, max_length: int, max_response_length: int) -> list[str]:
        out = []
        if self.truncated_prompts:
            out.append(f"{description}: cut the start of {self.truncated_prompts} prompt(s) so that prompt and "
                       f"response fit max_length ({max_length} tokens)")
        if self.truncated_responses:
            out.append(f"{description}: cut the end of {self.truncated_responses} response(s) longer than "
                       f"max_response_length ({max_response_length} tokens)")
        if self.dropped:
            out.append(f"{description}: dropped {self.dropped} pair(s) longer than the limits (too_long drop)")
        return out


class PreferenceEncoder:
    """Token ids of preference pairs.

    Decoder-only: prompt = [BOS] prompt tokens, each response follows it (after a space unless either side has
    whitespace at the join), and the whole row fits `max_length`. Encoder-decoder: the prompt is the encoder
    input ([BOS (BART)] prompt EOS, at most `max_length`), a response the decoder's target ([BOS (BART)] response).
    `add_eos` ends each response with EOS (DPO and PPO policies learn to stop; a reward model scores the text).
    """

    def __init__(self, tokenizer, is_encoder_decoder: bool, family: str, max_length: int, max_response_length: int,
                 too_long: str = "truncate", add_eos: bool = True):
        if too_long not in TOO_LONG:
            raise LmforgeError(f"too_long must be one of {', '.join(TOO_LONG)}, not {too_long!r}")
        if add_eos and tokenizer.eos_token_id is None:
            raise LmforgeError("the tokenizer has no EOS token, which ends every response; use a tokenizer with one")
        self.tokenizer, self.is_encoder_decoder = tokenizer, is_encoder_decoder
        self.max_length, self.max_response_length, self.too_long = max_length, max_response_length, too_long
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and (
            family == "bart" or not is_encoder_decoder) else []
        self.prompt_prefix = bos
        self.prompt_suffix = [tokenizer.eos_token_id] if is_encoder_decoder and tokenizer.eos_token_id is not None \
            else []
        self.response_prefix = bos if is_encoder_decoder else []
        self.response_suffix = [tokenizer.eos_token_id] if add_eos else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise LmforgeError("the tokenizer has neither a pad nor an EOS token to pad batches with")
        room = max_response_length - len(self.response_prefix) - len(self.response_suffix)
        if room < 1:
            raise LmforgeError(f"max_response_length ({max_response_length}) leaves no room for a response")
        if not is_encoder_decoder and max_length <= max_response_length:
            raise LmforgeError(f"max_length ({max_length}) must be longer than max_response_length "
                               f"({max_response_length}), leaving room for the prompt")

    def join(self, prompt: str, response: str) -> str:
        if self.is_encoder_decoder or not prompt or prompt[-1].isspace() or response[:1].isspace():
            return response
        return " " + response

    def encode(self, pairs: list[PreferencePair], description: str = "the pairs"
               ) -> tuple[list[EncodedPair], PreferenceLengths]:
        report = PreferenceLengths()
        prompts = self.tokenizer.encode_batch([p.prompt for p in pairs])
        chosen = self.tokenizer.encode_batch([self.join(p.prompt, p.chosen) for p in pairs])
        rejected = self.tokenizer.encode_batch([self.join(p.prompt, p.rejected) for p in pairs])
        out = []
        for pair, prompt, good, bad in zip(pairs, prompts, chosen, rejected):
            encoded = self.fit(pair, prompt, good, bad, report)
            if encoded is not None:
                out.append(encoded)
        if not out:
            raise LmforgeError(f"no pair of {description} is within the length limits; raise max_length or "
                               "max_response_length, or set too_long to truncate")
        return out, report

    def fit(self, pair: PreferencePair, prompt: list[int], good: list[int], bad: list[int],
            report: PreferenceLengths) -> EncodedPair | None:
        room = self.max_response_length - len(self.response_prefix) - len(self.response_suffix)
        responses = []
        cut_response = False
        for toks in (good, bad):
            if len(toks) > room:
                cut_response = True
                toks = toks[:room]
            responses.append(self.response_prefix + toks + self.response_suffix)
        specials = len(self.prompt_prefix) + len(self.prompt_suffix)
        if self.response_suffix and not self.is_encoder_decoder and not prompt and not self.prompt_prefix:
            raise LmforgeError(f"the pair {pair.id or '?'} has an empty prompt and the tokenizer has no BOS token to "
                               "start the row with; give every pair a prompt")
        prompt_room = self.max_length - specials - (0 if self.is_encoder_decoder else max(map(len, responses)))
        cut_prompt = len(prompt) > prompt_room
        if (cut_response or cut_prompt) and self.too_long != "truncate":
            if self.too_long == "error":
                total = len(prompt) + specials + max(len(good), len(bad))
                raise LmforgeError(f"the pair {pair.id or '?'} is {total} tokens, longer than max_length "
                                   f"({self.max_length}) or max_response_length ({self.max_response_length}); raise "
                                   "the limits or set too_long to truncate or drop")
            report.dropped += 1
            return None
        if cut_prompt:
            if prompt_room < 1:
                report.dropped += 1
                return None
            prompt = prompt[len(prompt) - prompt_room:]
        report.truncated_prompts += cut_prompt
        report.truncated_responses += cut_response
        return EncodedPair(self.prompt_prefix + prompt + self.prompt_suffix, responses[0], responses[1],
                           pair.margin, pair.weight)


def load_prompts(spec: str) -> list[str]:
    """Prompts for rollouts: a text file (.txt, one prompt per line, blank lines skipped), or the prompts of a
    preference spec (records with a prompt field, HH-RLHF transcripts, named sets; several joined with "+"),
    each prompt once, in order."""
    prompts: list[str] = []
    for part in [s.strip() for s in spec.split("+") if s.strip()]:
        path = Path(part)
        if path.suffix == ".txt":
            if not path.is_file():
                raise LmforgeError(f"prompt file {path} does not exist")
            prompts += [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
            continue
        path, _ = resolve_spec(part)
        for index, (where, record) in enumerate(iter_records(path)):
            if isinstance(record.get("prompt"), str):
                prompts.append(record["prompt"])
            else:
                prompts += [p.prompt for p in pairs_of_record(record, where, index)[:1]]
    unique = list(dict.fromkeys(prompts))
    if not unique:
        raise LmforgeError(f"{spec} holds no prompts")
    return unique
