"""Source/target pairs for seq2seq and prompt->completion training and evaluation.

Where pairs come from (a *data spec*):

    samsum, samsum:validation     a named data set: under $LMFORGE_DATA, else fetched from its public source
    owner/name[:subset/split]     a Hub data set (knkarthick/samsum:validation), read from its published files
    pairs.jsonl | .csv | .tsv     one record per line/row (also .json, .parquet, gzipped); the source and target
                                  fields are configurable
    train.en,train.de             two parallel text files, line i of one aligned with line i of the other

Each example keeps all its fields, so a prompt template such as "summarize: {dialogue}" can use any
of them; the fields of parallel files are named by their suffixes ("en", "de") and also "source"
and "target". Text is normalised lightly: CRLF becomes LF and surrounding whitespace is stripped.
An example with an empty source is dropped and counted (SAMSum's train split has one); an empty
target is an error.

Then, with a tokenizer: `PairEncoder` turns prompts and targets into token ids the way the model
family expects (EOS-terminated; BART also starts with BOS), applies the length limits (truncate,
drop or error, with the counts reported), and `length_batches` groups examples of similar length
so padding stays small.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.data.hub import is_dataset_id
from lmforge.data.public import named_file
from lmforge.data.records import iter_records, record_format
from lmforge.errors import LmforgeError

TOO_LONG = ("truncate", "drop", "error")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


@dataclass(frozen=True)
class NamedPairs:
    """A public pair data set: its files per split (under `$LMFORGE_DATA/<name>/`, else from data/public.py's
    sources), and its default fields."""

    name: str
    splits: dict  # split -> file name, or (source file, target file) for parallel text
    source_field: str
    target_field: str
    id_field: str | None = None
    default_template: str | None = None


NAMED = {
    "samsum": NamedPairs("samsum", {"train": "train.jsonl", "validation": "validation.jsonl",
                                    "test": "test.jsonl"}, "dialogue", "summary", id_field="id"),
    "multi30k": NamedPairs("multi30k", {"train": ("train.en", "train.de"), "validation": ("val.en", "val.de"),
                                        "test": ("test2016.en", "test2016.de"),
                                        **{f"test{year}": (f"test{year}.en", f"test{year}.de")
                                           for year in (2016, 2017, 2018)}}, "en", "de"),
}


@dataclass
class Example:
    id: str
    fields: dict[str, str]


@dataclass
class PairSet:
    """Examples with the names of their source and target fields, and notes on what loading changed."""

    description: str
    examples: list[Example]
    source_field: str
    target_field: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def sources(self) -> list[str]:
        return [e.fields[self.source_field] for e in self.examples]

    @property
    def targets(self) -> list[str]:
        return [e.fields[self.target_field] for e in self.examples]

    def prompts(self, template: str | None = None, prefix: str = "") -> list[str]:
        """The model inputs: `prefix` + the template filled with each example's fields (default: the source)."""
        if not template:
            return [prefix + s for s in self.sources]
        check_template(template, self.examples[0].fields if self.examples else {}, self.description)
        return [prefix + template.format_map(e.fields) for e in self.examples]

    def head(self, n: int | None) -> PairSet:
        """The first `n` examples (all when n is None or 0)."""
        if not n or n >= len(self.examples):
            return self
        return PairSet(self.description, self.examples[:n], self.source_field, self.target_field, list(self.notes))


def check_template(template: str, fields: dict, where: str) -> None:
    """A template names only fields the data has (literal braces are written {{ and }})."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise LmforgeError(f"the prompt template {template!r} is malformed ({exc}); write literal braces as {{{{ }}}}") \
            from None
    for name in names:
        if name == "" or name.isdigit():
            raise LmforgeError(f"the prompt template {template!r} has a placeholder without a field name; "
                               f"name one of the fields of {where}: {', '.join(fields)}")
        if name not in fields:
            raise LmforgeError(f"the prompt template {template!r} names the field {name!r}, which {where} does not "
                               f"have; its fields are: {', '.join(fields)}")


# ---- reading ------------------------------------------------------------------------------------


def split_spec(spec: str, default_split: str) -> tuple[NamedPairs | None, str]:
    """(the named data set, its split) for "samsum" or "samsum:validation"; (None, spec) for a path."""
    name, _, split = spec.partition(":")
    if name not in NAMED:
        return None, spec
    split = SPLIT_ALIASES.get(split or default_split, split or default_split)
    if split not in NAMED[name].splits:
        raise LmforgeError(f"{name} has no split {split!r}; choose one of {', '.join(NAMED[name].splits)}")
    return NAMED[name], split


def load_pairs(spec: str, split: str = "train", source_field: str | None = None,
               target_field: str | None = None) -> PairSet:
    """Read the pairs of a data spec (see the module docstring). `split` applies to a named data set given
    without one. Fields default to the data set's own (SAMSum: dialogue/summary), else "source"/"target"."""
    named, split = split_spec(spec, split)
    id_field = named.id_field if named else None
    if named is not None:
        files = named.splits[split]
        paths = [named_file(named.name, f) for f in ((files,) if isinstance(files, str) else files)]
        for path in paths:
            if not path.is_file():
                held_back = " (test splits are held back; evaluate on validation)" if split.startswith("test") else ""
                raise LmforgeError(f"{path} does not exist{held_back}; check that $LMFORGE_DATA holds "
                                   f"{named.name}/ with its files")
        source_field, target_field = source_field or named.source_field, target_field or named.target_field
        description = f"{named.name}:{split}"
    elif not Path(spec).exists() and "," not in spec and is_dataset_id(spec):
        from lmforge.data.hub import resolve_dataset

        hub = resolve_dataset(spec, split)
        examples = [e for path in hub.files for e in read_records(path)]
        return finish(hub.description, examples, source_field or "source", target_field or "target")
    else:
        paths = [Path(p) for p in spec.split(",")]
        description = spec
    if len(paths) == 2:
        examples = read_parallel(*paths)
        source_field = source_field or "source"
        target_field = target_field or "target"
    elif len(paths) == 1:
        examples = read_records(paths[0], id_field=id_field)
        source_field, target_field = source_field or "source", target_field or "target"
    else:
        raise LmforgeError(f"cannot read {spec!r}: give a named data set ({', '.join(NAMED)}), a Hub data set id "
                           "(owner/name), one .jsonl/.csv/.tsv/.parquet file, or two parallel text files separated by "
                           "a comma")
    return finish(description, examples, source_field, target_field)


def read_records(path: Path, id_field: str | None = None) -> list[Example]:
    """The records of a JSON Lines, JSON, CSV, TSV or Parquet file (gzipped or not; by suffix); every value
    becomes a string field."""
    if not path.is_file():
        raise LmforgeError(f"data file {path} does not exist")
    if record_format(path) is None:
        raise LmforgeError(f"cannot tell the format of {path} from its suffix; use .jsonl, .json, .csv, .tsv or "
                           ".parquet (optionally .gz), or two parallel text files separated by a comma")
    examples = []
    for index, (where, record) in enumerate(iter_records(path)):
        fields = {str(k): "" if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                  for k, v in record.items() if k is not None}
        example_id = fields.get(id_field or "id") or str(index)
        examples.append(Example(example_id, {k: _clean(v) for k, v in fields.items()} | {"_where": where}))
    return examples


def read_parallel(source_path: Path, target_path: Path) -> list[Example]:
    """Two aligned text files; the fields are named by the file suffixes and also "source"/"target"."""
    texts = []
    for path in (source_path, target_path):
        if not path.is_file():
            raise LmforgeError(f"parallel text file {path} does not exist")
        with _open_text(path) as f:
            texts.append(f.read().split("\n"))
        if texts[-1] and texts[-1][-1] == "":
            texts[-1].pop()
    if len(texts[0]) != len(texts[1]):
        raise LmforgeError(f"the parallel files do not align: {source_path} has {len(texts[0])} lines but "
                           f"{target_path} has {len(texts[1])}; give files with one line per sentence pair")
    names = [p.suffix.lstrip(".") for p in (source_path, target_path)]
    if not all(names) or names[0] == names[1] or {"source", "target"} & set(names):
        names = []
    examples = []
    for i, (s, t) in enumerate(zip(*texts)):
        s, t = _clean(s), _clean(t)
        fields = {"source": s, "target": t, **dict(zip(names, (s, t))),
                  "_where": f"line {i + 1} of {source_path} and {target_path}"}
        examples.append(Example(str(i), fields))
    return examples


def finish(description: str, examples: list[Example], source_field: str, target_field: str) -> PairSet:
    """Check the fields, drop empty sources (noted), refuse empty targets."""
    kept, dropped = [], []
    for e in examples:
        where = e.fields.pop("_where")
        for role, name in (("source", source_field), ("target", target_field)):
            if name not in e.fields:
                raise LmforgeError(f"{where} has no {role} field {name!r}; its fields are: {', '.join(e.fields)} "
                                   f"(set the {role} field with --{role}-field or data.{role}_field)")
        if not e.fields[target_field]:
            raise LmforgeError(f"{where} (id {e.id}) has an empty target {target_field!r}; remove the example or "
                               "give it a target")
        (kept if e.fields[source_field] else dropped).append(e)
    notes = []
    if dropped:
        shown = ", ".join(e.id for e in dropped[:5]) + (" …" if len(dropped) > 5 else "")
        notes.append(f"dropped {len(dropped)} example(s) of {description} with an empty source "
                     f"{source_field!r} (id {shown})")
    if not kept:
        raise LmforgeError(f"{description} holds no examples with a non-empty source {source_field!r}")
    return PairSet(description, kept, source_field, target_field, notes)


def _open_text(path: Path):
    return open(path, encoding="utf-8", newline="")


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


# ---- tokens -----------------------------------------------------------------------------------


@dataclass
class LengthReport:
    """How the length limits changed the data: counts per side, for one sentence in the log."""

    truncated: dict = field(default_factory=lambda: {"source": 0, "target": 0})
    dropped: dict = field(default_factory=lambda: {"source": 0, "target": 0})
    limits: dict = field(default_factory=dict)

    def notes(self, description: str) -> list[str]:
        out = []
        for side in ("source", "target"):
            if self.truncated[side]:
                out.append(f"{description}: truncated {self.truncated[side]} {side}(s) longer than "
                           f"{self.limits[side]} tokens")
            if self.dropped[side]:
                out.append(f"{description}: dropped {self.dropped[side]} example(s) whose {side} is longer than "
                           f"{self.limits[side]} tokens")
        return out

    def to_dict(self) -> dict:
        return {"truncated": dict(self.truncated), "dropped": dict(self.dropped), "limits": dict(self.limits)}


class PairEncoder:
    """Token ids of prompts and targets as a model family expects them.

    Encoder-decoder: source = [BOS (BART only)] prompt EOS, labels = [BOS (BART only)] target EOS; the
    decoder input is the labels shifted behind decoder_start_token_id (done by the model).
    Decoder-only: input = [BOS] prompt target EOS, with the prompt positions masked out of the loss; the
    target follows the prompt after a space (unless the prompt ends in whitespace), as GPT-2 style
    tokenizers expect ("A:" + " white", not "A:" + "white").
    Lengths count these tokens; `too_long` says what happens to a longer source or target.
    """

    def __init__(self, tokenizer, is_encoder_decoder: bool, family: str, max_source_length: int,
                 max_target_length: int, too_long: str = "truncate"):
        if too_long not in TOO_LONG:
            raise LmforgeError(f"too_long must be one of {', '.join(TOO_LONG)}, not {too_long!r}")
        if tokenizer.eos_token_id is None:
            raise LmforgeError("the tokenizer has no EOS token, which ends every target; use a tokenizer with one "
                               "(e.g. </s> or <|endoftext|>)")
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.too_long = too_long
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and (
            family == "bart" or not is_encoder_decoder) else []
        self.eos = [tokenizer.eos_token_id]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def sources(self, prompts: list[str], ids: list[str], report: LengthReport) -> list[list[int] | None]:
        """Encoder inputs (or decoder-only prompts, without EOS); None where an example is dropped."""
        suffix = self.eos if self.is_encoder_decoder else []
        return self._fit(self.tokenizer.encode_batch(prompts), self.bos, suffix, self.max_source_length, "source",
                         ids, report)

    def targets(self, targets: list[str], ids: list[str], report: LengthReport) -> list[list[int] | None]:
        prefix = self.bos if self.is_encoder_decoder else []
        return self._fit(self.tokenizer.encode_batch(targets), prefix, self.eos, self.max_target_length, "target",
                         ids, report)

    def _fit(self, encoded, prefix, suffix, limit, side, ids, report) -> list[list[int] | None]:
        report.limits[side] = limit
        room = limit - len(prefix) - len(suffix)
        if room < 1:
            raise LmforgeError(f"max_{side}_length ({limit}) leaves no room for text after the special tokens")
        out = []
        for toks, example_id in zip(encoded, ids):
            if len(toks) > room:
                if self.too_long == "error":
                    raise LmforgeError(f"the {side} of example {example_id} is {len(toks) + len(prefix) + len(suffix)} "
                                       f"tokens, longer than max_{side}_length ({limit}); raise the limit or set "
                                       "too_long to truncate or drop")
                if self.too_long == "drop":
                    report.dropped[side] += 1
                    out.append(None)
                    continue
                report.truncated[side] += 1
                toks = toks[:room]
            out.append(prefix + toks + suffix)
        return out

    def encode(self, prompts: list[str], targets: list[str], ids: list[str],
               description: str) -> tuple[list[tuple[list[int], list[int]]], LengthReport]:
        """(source ids, target ids) of every kept example, and the report of what the limits changed."""
        report = LengthReport()
        if not self.is_encoder_decoder:
            targets = [t if not p or p[-1].isspace() or t[:1].isspace() else " " + t for p, t in zip(prompts, targets)]
        src = self.sources(prompts, ids, report)
        tgt = self.targets(targets, ids, report)
        pairs = [(s, t) for s, t in zip(src, tgt) if s is not None and t is not None]
        if not pairs:
            raise LmforgeError(f"no example of {description} is within the length limits; raise "
                               "max_source_length/max_target_length or set too_long to truncate")
        return pairs, report

    def collate(self, pairs: list[tuple[list[int], list[int]]], device: torch.device | str = "cpu") -> dict:
        """A right-padded batch: encoder-decoder {input_ids, attention_mask, labels}; decoder-only
        {input_ids, labels} where labels are the next tokens, -100 on the prompt and the padding."""
        if self.is_encoder_decoder:
            input_ids, mask = right_pad([s for s, _ in pairs], self.pad_id)
            labels, _ = right_pad([t for _, t in pairs], -100)
            return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
        rows = [s + t for s, t in pairs]
        targets = [[-100] * (len(s) - 1) + t + [-100] for s, t in pairs]  # position i predicts token i + 1
        ids, _ = right_pad([r[:-1] for r in rows], self.pad_id)
        labels, _ = right_pad([t[:-1] for t in targets], -100)
        return {"input_ids": ids.to(device), "labels": labels.to(device)}


def right_pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of rows padded on the right with `value`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def length_batches(lengths: list[tuple[int, int]], batch_tokens: int, max_batch_size: int,
                   rng: random.Random | None) -> list[list[int]]:
    """Indices grouped into batches of similar length: each batch's padded size (rows x (longest source +
    longest target)) stays within `batch_tokens`. With `rng` the grouping varies a little and the batch
    order is shuffled (a new epoch); without, it is deterministic (evaluation)."""
    noise = (lambda: rng.random()) if rng is not None else (lambda: 0.0)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0] + noise() * 4, lengths[i][1]))
    batches, current, longest_s, longest_t = [], [], 0, 0
    for i in order:
        s, t = lengths[i]
        ls, lt = max(longest_s, s), max(longest_t, t)
        if current and ((len(current) + 1) * (ls + lt) > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, ls, lt = [], s, t
        current.append(i)
        longest_s, longest_t = ls, lt
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches
