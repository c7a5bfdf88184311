"""`lmforge train [--config FILE.yaml] [--KEY VALUE ...] [KEY=VALUE ...]`: train or fine-tune a language model.

Every config field is an option: `--model.n_layer 4`, `--learning_rate=3e-4`, or `model.n_layer=4`.
The YAML file comes first, the options override it. `--resume` continues the run in out_dir (with its
saved config.yaml when no --config is given).
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from lmforge.train.config import TrainConfig, field_types, load_config, parse_overrides
from lmforge.train.trainer import CONFIG, train

PREFIX = "cfg:"


def _default(key: str):
    value = TrainConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML run config (e.g. configs/shakespeare-char-cpu.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as the options below")
    group = p.add_argument_group("config fields (override the YAML file)")
    for key, (kind, f) in field_types().items():
        base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        name = getattr(base[0], "__name__", str(base[0]))
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {_default(key)!r})".strip()
        extra = {"nargs": "?", "const": "true"} if base[0] is bool else {}
        group.add_argument(f"--{key}", dest=PREFIX + key, default=argparse.SUPPRESS, metavar=name.upper(),
                           help=help_text.replace("%", "%%"), **extra)


def collect_overrides(args: argparse.Namespace) -> dict:
    out = {key[len(PREFIX):]: value for key, value in vars(args).items() if key.startswith(PREFIX)}
    out.update(parse_overrides(list(args.overrides)))
    return out


def run(args: argparse.Namespace) -> int:
    overrides = collect_overrides(args)
    config_path = args.config
    if config_path is None and args.resume:
        saved = Path(overrides.get("out_dir", TrainConfig().out_dir)) / CONFIG
        config_path = saved if saved.is_file() else None
    config = load_config(config_path, overrides)
    result = train(config, resume=args.resume, quiet=args.quiet)
    return 130 if result.stopped == "interrupted" else 0



