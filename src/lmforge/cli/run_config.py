"""The command line of every training verb: `lmforge VERB [--config FILE.yaml] [--KEY VALUE ...] [KEY=VALUE ...]`.

Every field of the verb's config class is an option (`--model.n_layer 4`, `--learning_rate=3e-4`,
`--model.n-layer 4`) or a `KEY=VALUE` item; the YAML file comes first and the options override it.
`--resume` continues the run in out_dir (with its saved config.yaml when no --config is given).
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.train.config import RUN_CONFIG, LoopConfig, default_of, field_types, parse_overrides

PREFIX = "cfg:"


def add_arguments(p: argparse.ArgumentParser, config_class: type[LoopConfig]) -> None:
    p.add_argument("--config", help="a YAML run config (e.g. one of configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="config overrides, as the options below")
    group = p.add_argument_group("config fields (override the YAML file)")
    for key, (kind, f) in field_types(config_class).items():
        base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        name = getattr(base[0], "__name__", str(base[0]))
        help_text = f"{f.metadata.get('help', '')} (default: {default_of(config_class, key)!r})".strip()
        extra = {"nargs": "?", "const": "true"} if base[0] is bool else {}
        flags = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])
        group.add_argument(*flags, dest=PREFIX + key, default=argparse.SUPPRESS, metavar=name.upper(),
                           help=help_text.replace("%", "%%"), **extra)


def load_from_args(args: argparse.Namespace, config_class: type[LoopConfig]) -> LoopConfig:
    """The config the command line describes: its YAML file (--config, or a lone CONFIG.yaml item), then the
    options and KEY=VALUE items."""
    items = list(args.items)
    config_path = args.config
    files = [item for item in items if "=" not in item and not item.startswith("--")]
    if files:
        if config_path is not None or len(files) > 1 or not files[0].endswith((".yaml", ".yml")):
            raise LmforgeError(f"cannot read {files[0]!r}; give the config file as --config FILE.yaml and "
                               "overrides as --key value or key=value")
        config_path = files[0]
        items.remove(files[0])
    overrides = {key[len(PREFIX):]: value for key, value in vars(args).items() if key.startswith(PREFIX)}
    overrides.update(parse_overrides(config_class, items))
    if config_path is None and args.resume:
        out_dir = overrides.get("out_dir", config_class().out_dir)
        saved = Path(out_dir) / RUN_CONFIG
        config_path = saved if saved.is_file() else None
    return config_class.load(config_path, overrides)


def finish(result, *lines: str) -> int:
    """Print where a training verb's best checkpoint is and the `lines` saying what to do next; the exit status
    (130 when the run was interrupted)."""
    value = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    print(f"best {result.best_metric} {value} at iter {result.best_iter}: {result.best_dir}")
    for line in lines:
        print(line)
    return 130 if result.stopped == "interrupted" else 0


def trained_model(config: LoopConfig, result) -> str:
    """The model of a run's best checkpoint as the other verbs take it: the folder, or the base with the adapter."""
    return f"{config.init_from} --adapter {result.best_dir}" if config.adapter.enabled else str(result.best_dir)
