"""The training configuration: dataclasses whose defaults are the single source of truth, YAML files, and
command-line overrides.

A run is described by a YAML file with the same nesting as `TrainConfig` (`data:` and `model:`
sections, the rest at the top level). Any field can then be overridden as `--model.n_layer 4`,
`--model.n_layer=4` or `model.n_layer=4`; values are parsed by the field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmforge.errors import LmforgeError


@dataclass
class DataConfig:
    source: str = field(default="tinyshakespeare", metadata={
        "help": "a named data set (tinyshakespeare), a text file, a folder of them, a .jsonl file, "
                "or a folder made by `lmforge prepare`"})
    tokenizer: str = field(default="auto", metadata={
        "help": "char, bpe (trained on the corpus), or a tokenizer/model folder; auto: the fine-tuned "
                "model's tokenizer, else char"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary size of a trained bpe tokenizer"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the tokens held out for validation"})
    text_field: str = field(default="text", metadata={"help": "the text field of JSON Lines records"})
    errors: str = field(default="strict", metadata={
        "help": "non-UTF-8 bytes: strict (stop and name them), replace or ignore"})


@dataclass
class ModelShape:
    """The architecture of a model trained from scratch; a fine-tuned model brings its own (only
    `block_size`, the training context, and `dropout` apply to it)."""

    family: str = field(default="gpt2", metadata={"help": "gpt2, opt, llama, mistral or qwen2"})
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = field(default=64, metadata={"help": "context length of the training windows"})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width; null: 4 * n_embd"})
    dropout: float = 0.0
    bias: bool = field(default=False, metadata={"help": "biases in linear layers and norms"})


@dataclass
class TrainConfig:
    out_dir: str = field(default="runs/train", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={
        "help": "scratch, resume (continue the run in out_dir), or a Hugging Face/lmforge model folder"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelShape = field(default_factory=ModelShape)
    batch_size: int = field(default=12, metadata={"help": "sequences per micro-step per process"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_iters: int = field(default=2000, metadata={"help": "optimizer steps"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "stop after this much wall time (the schedule stays planned on max_iters)"})
    learning_rate: float = 1e-3
    min_lr: float = field(default=1e-4, metadata={"help": "the learning rate at the end of the cosine decay"})
    warmup_iters: int = 100
    lr_decay_iters: int | None = field(default=None, metadata={"help": "end of the cosine decay; null: max_iters"})
    decay_lr: bool = field(default=True, metadata={"help": "false: constant learning rate after warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay of matrices and embeddings"})
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm; 0: off"})
    eval_interval: int = field(default=250, metadata={"help": "evaluate and checkpoint every this many steps"})
    eval_iters: int = field(default=20, metadata={"help": "batches per split in each evaluation"})
    log_interval: int = field(default=10, metadata={"help": "steps between progress lines"})
    patience: int = field(default=0, metadata={
        "help": "stop after this many evaluations without a better validation loss; 0: never"})
    sample_tokens: int = field(default=200, metadata={"help": "tokens of the sample printed at each evaluation"})
    sample_prompt: str = field(default="\n", metadata={"help": "the prompt of the periodic samples"})
    temperature: float = 0.8
    top_k: int = 200
    seed: int = 1337
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(default="auto", metadata={
        "help": "float32, bfloat16 or float16 (autocast); auto: float32 on CPU, bfloat16 on GPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch; 0: torch's default"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters


# Fields that may change when a run is resumed; any other difference means a different run.
RESUMABLE_CHANGES = frozenset({
    "out_dir", "init_from", "max_iters", "max_minutes", "eval_interval", "eval_iters", "log_interval",
    "patience", "sample_tokens", "sample_prompt", "temperature", "top_k", "device", "compile", "threads",
})


def field_types(cls=TrainConfig, prefix: str = "") -> dict[str, tuple[type, dataclasses.Field]]:
    """Every leaf field as a dotted key -> (type, field)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update(field_types(kind, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (kind, f)
    return out


def closest_key(key: str) -> str | None:
    keys = list(field_types())
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if by_leaf:
        return by_leaf[0]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key_error(key: str, where: str) -> LmforgeError:
    close = closest_key(key)
    hint = f"; did you mean {close}?" if close else "; see `lmforge train --help` for the valid keys"
    return LmforgeError(f"unknown config key {key!r} in {where}{hint}")


def coerce(key: str, value, kind: type):
    """`value` (from YAML or the command line) as the field's type, or a one-sentence error."""
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        pass
    raise LmforgeError(f"config key {key} expects {'an' if kind is int else 'a'} {kind.__name__}"
                       f"{' or null' if optional else ''}, got {value!r}")


def flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name in ("data", "model"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def from_flat(values: dict, where: str = "the config", base: TrainConfig | None = None) -> TrainConfig:
    """Apply dotted key -> value pairs to `base` (default: the defaults), checking every key and value."""
    fields = field_types()
    config = base if base is not None else TrainConfig()
    for key, value in values.items():
        if key not in fields:
            raise unknown_key_error(key, where)
        kind, _ = fields[key]
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, coerce(key, value, kind))
    validate(config)
    return config


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmforgeError(f"{path} should hold a mapping of config keys, not a {type(data).__name__}")
    return flatten(data)


def parse_overrides(items: list[str]) -> dict:
    """`--key value`, `--key=value` and `key=value` items as a dotted key -> string mapping."""
    out, i = {}, 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(items):
                i += 1
                value = items[i]
            else:
                raise LmforgeError(f"the override --{key} has no value; write --{key} VALUE")
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise LmforgeError(f"cannot read the override {item!r}; write --key value or key=value")
        out[key.replace("-", "_") if key not in field_types() else key] = value
        i += 1
    return out


def load_config(path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then the overrides (a dotted-key mapping or command-line items)."""
    config = TrainConfig()
    if path is not None:
        config = from_flat(load_yaml(path), where=str(path), base=config)
    if overrides:
        flat = parse_overrides(overrides) if isinstance(overrides, list) else flatten(overrides)
        config = from_flat(flat, where="the overrides", base=config)
    return config


def to_yaml(config: TrainConfig | dict) -> str:
    data = config.to_dict() if isinstance(config, TrainConfig) else config
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def validate(c: TrainConfig) -> None:
    checks = [
        (c.batch_size >= 1, "batch_size must be at least 1"),
        (c.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
        (c.max_iters >= 0, "max_iters must not be negative"),
        (c.max_minutes is None or c.max_minutes > 0, "max_minutes must be positive (or null for no limit)"),
        (c.learning_rate > 0, "learning_rate must be positive"),
        (0 <= c.min_lr <= c.learning_rate, "min_lr must be between 0 and learning_rate"),
        (c.warmup_iters >= 0, "warmup_iters must not be negative"),
        (c.eval_interval >= 1, "eval_interval must be at least 1"),
        (c.eval_iters >= 1, "eval_iters must be at least 1"),
        (c.log_interval >= 1, "log_interval must be at least 1"),
        (c.patience >= 0, "patience must not be negative"),
        (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
        (c.grad_clip >= 0, "grad_clip must not be negative (0 turns clipping off)"),
        (0 <= c.model.dropout < 1, "model.dropout must be in [0, 1)"),
        (c.model.block_size >= 1, "model.block_size must be at least 1"),
        (c.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype must be auto, float32, bfloat16 or float16"),
        (c.data.errors in ("strict", "replace", "ignore"), "data.errors must be strict, replace or ignore"),
        (0 < c.data.val_fraction < 1, "data.val_fraction must be between 0 and 1 (exclusive)"),
        (c.threads >= 0, "threads must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise LmforgeError(message)
