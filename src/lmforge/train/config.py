"""The configuration of every training verb: dataclasses whose defaults are the single source of truth,
YAML files, and command-line overrides.

`LoopConfig` holds what the training loop does for any task (budgets, schedule, optimizer, evaluation,
checkpoints, precision, devices); each task's config extends it with its data and model sections and its
own fields (train/lm.py: `TrainConfig`, train/pairs.py: `FinetuneConfig`). A run is described by a YAML file
with the same nesting (`data:` and `model:` sections, the rest at the top level); any field can then be
overridden as `--model.n_layer 4`, `--model.n_layer=4`, `--model.n-layer 4` or `model.n_layer=4`; values
are parsed by the field's type, and an unknown key is answered with the closest valid one.

    cfg = TrainConfig.load("configs/shakespeare-char-cpu.yaml", ["--max_iters", "500"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from lmforge.errors import LmforgeError

RUN_CONFIG = "config.yaml"  # the config a run folder keeps


@dataclass
class LoopConfig:
    """What the training loop does, whatever the task."""

    out_dir: str = field(default="runs/train", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={
        "help": "scratch, or a Hugging Face/lmforge model folder or Hub model name to fine-tune (resume a run "
                "with --resume)"})
    max_iters: int | None = field(default=2000, metadata={
        "help": "optimizer steps; null: train for max_minutes, with the schedule planned on the time"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "stop after this much wall time (with max_iters set, the schedule stays planned on max_iters)"})
    learning_rate: float = 1e-3
    min_lr: float = field(default=1e-4, metadata={"help": "the learning rate at the end of the cosine decay"})
    warmup_iters: int = 100
    lr_decay_iters: int | None = field(default=None, metadata={"help": "end of the cosine decay; null: max_iters"})
    decay_lr: bool = field(default=True, metadata={"help": "false: constant learning rate after warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay of matrices and embeddings"})
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm; 0: off"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_nonfinite_steps: int = field(default=20, metadata={
        "help": "stop after this many steps in a row whose loss or gradient is not finite (each is skipped); 0: never"})
    eval_interval: int = field(default=250, metadata={"help": "evaluate and checkpoint every this many steps"})
    eval_minutes: float | None = field(default=None, metadata={
        "help": "evaluate and checkpoint every this many minutes of the run instead of every eval_interval steps"})
    log_interval: int = field(default=10, metadata={"help": "steps between progress lines"})
    patience: int = field(default=0, metadata={
        "help": "stop after this many evaluations without a better best_metric; 0: never"})
    best_metric: str = field(default="val_loss", metadata={
        "help": "what picks the best checkpoint: val_loss (lower is better) or another metric the task reports"})
    seed: int = 1337
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(default="auto", metadata={
        "help": "float32, bfloat16 or float16 (autocast); auto: float32 on CPU, bfloat16 on GPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model for the training steps"})
    distributed: str = field(default="ddp", metadata={
        "help": "under torchrun: ddp (a replica per process) or fsdp (parameters, gradients and optimizer state "
                "sharded across the processes, for models that do not fit one device)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch; 0: torch's default"})
    max_memory: str | None = field(default=None, metadata={
        "help": "refuse a run estimated to need more memory than this (512MB, 8GiB); null: what the device has free"})

    # Fields that may change when a run is resumed; any other difference means a different run.
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({
        "out_dir", "init_from", "max_iters", "max_minutes", "eval_interval", "eval_minutes", "log_interval",
        "patience", "device", "compile", "threads", "max_nonfinite_steps", "max_memory"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def decay_iters(self) -> int | None:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, the sentence shown when it fails) for every setting; tasks add their own."""
        return [
            (self.max_iters is not None or self.max_minutes is not None, "set max_iters, max_minutes, or both"),
            (self.max_iters is None or self.max_iters >= 0, "max_iters must not be negative"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive (or null for no limit)"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.min_lr <= self.learning_rate, "min_lr must be between 0 and learning_rate"),
            (self.warmup_iters >= 0, "warmup_iters must not be negative"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
            (self.max_nonfinite_steps >= 0, "max_nonfinite_steps must not be negative (0: never stop)"),
            (self.eval_interval >= 1, "eval_interval must be at least 1"),
            (self.eval_minutes is None or self.eval_minutes > 0, "eval_minutes must be positive (or null)"),
            (self.log_interval >= 1, "log_interval must be at least 1"),
            (self.patience >= 0, "patience must not be negative"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must not be negative (0 turns clipping off)"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"),
             "dtype must be auto, float32, bfloat16 or float16"),
            (self.distributed in ("ddp", "fsdp"), "distributed must be ddp or fsdp"),
            (self.threads >= 0, "threads must not be negative"),
        ]

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None):
        """The defaults, then the YAML file, then the overrides (a (nested or dotted) mapping, or command-line
        items), every key and value checked."""
        config = cls()
        if path is not None:
            config = apply(config, flatten(cls, read_yaml(path)), str(path))
        if overrides:
            flat = parse_overrides(cls, overrides) if isinstance(overrides, list) else flatten(cls, overrides)
            config = apply(config, flat, "the overrides")
        validate(config)
        return config

    @classmethod
    def from_any(cls, config):
        """`config` as this class: an instance, a mapping of (dotted) keys, a YAML file, or a run folder (its
        config.yaml, with out_dir pointing at the folder)."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.load(overrides=config)
        path = Path(config)
        if path.is_dir():
            if not (path / RUN_CONFIG).is_file():
                raise LmforgeError(f"{path} is not a run folder (no {RUN_CONFIG}); pass a YAML config instead")
            return cls.load(path / RUN_CONFIG, {"out_dir": str(path)})
        return cls.load(path)


def field_types(cls: type, prefix: str = "") -> dict[str, tuple[type, dataclasses.Field]]:
    """Every leaf field of a config class as a dotted key -> (type, field)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update(field_types(kind, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (kind, f)
    return out


def default_of(cls: type, key: str):
    value = cls()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def closest_key(cls: type, key: str) -> str | None:
    keys = list(field_types(cls))
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if by_leaf:
        return by_leaf[0]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return close[0] if close else None


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
    except (TypeError, ValueError, OverflowError):
        pass
    raise LmforgeError(f"config key {key} expects {'an' if kind is int else 'a'} {kind.__name__}"
                       f"{' or null' if optional else ''}, got {value!r}")


def canonical_key(cls: type, key: str, where: str) -> str:
    """A key as written by a user (dashes allowed for underscores) as the config's dotted key, or an error
    that names the closest valid key."""
    keys = field_types(cls)
    for name in (key, key.replace("-", "_")):
        if name in keys:
            return name
    close = closest_key(cls, key.replace("-", "_"))
    hint = f"; did you mean {close}?" if close else "; see --help for the valid keys"
    raise LmforgeError(f"unknown config key {key!r} in {where}{hint}")


def apply(config, values: dict, where: str):
    """Set dotted key -> value pairs on `config`, checking every key and value."""
    keys = field_types(type(config))
    for key, value in values.items():
        name = canonical_key(type(config), key, where)
        target = config
        *parents, leaf = name.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, coerce(name, value, keys[name][0]))
    return config


def flatten(cls: type, mapping: dict, prefix: str = "") -> dict:
    """A nested mapping (YAML sections) as dotted keys; only the config's sections are descended into."""
    sections = {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])}
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key in sections:
            section = typing.get_type_hints(cls)[key]
            out.update(flatten(section, value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict:
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
    return data


def parse_overrides(cls: type, items: list[str]) -> dict:
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
        out[key] = value
        i += 1
    return out


def quantize_field():
    """A task config's `quantize`: the base model's linear layers as integers under the adapter it trains."""
    return field(default=None, metadata={
        "help": "int8 or int4: quantize init_from's linear layers at load and train an adapter over them, frozen "
                "(LoRA on an 8-bit base); null: as stored"})


def adapter_checks(config) -> list[tuple[bool, str]]:
    """The checks of a task config's `adapter` section, and what it asks of the rest of the run."""
    adapter = config.adapter
    return adapter.checks() + [
        (not adapter.enabled or config.init_from != "scratch",
         f"adapter.method {adapter.method} adapts a trained model: set init_from to a model folder or Hub name"),
        (not adapter.enabled or config.distributed != "fsdp",
         "an adapter trains on one process or with distributed ddp; fsdp shards whole models (full fine-tuning)"),
        (config.quantize in (None, "int8", "int4"), f"quantize must be int8, int4 or null, not {config.quantize!r}"),
        (config.quantize is None or adapter.enabled,
         "quantize freezes the base model's weights as integers: train an adapter over them (adapter.method lora)"),
    ]


def to_yaml(config) -> str:
    data = config.to_dict() if dataclasses.is_dataclass(config) else config
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def validate(config) -> None:
    for ok, message in config.checks():
        if not ok:
            raise LmforgeError(message)


def config_difference(config_class: type, saved: dict, current: dict) -> str | None:
    """The first setting that differs between two configs and makes them different runs, in words."""
    def flat(mapping: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in mapping.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    old, new = flat(saved), flat(current)
    for key in new:
        if key in config_class.RESUMABLE or key.split(".")[0] in config_class.RESUMABLE:
            continue
        if old.get(key) != new[key]:
            return f"{key} is {old.get(key)!r} there and {new[key]!r} here"
    return None
