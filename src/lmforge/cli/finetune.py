"""`lmforge finetune [CONFIG.yaml] [--key value ...]`: fine-tune on source/target pairs.

Every field of FinetuneConfig is a flag (`--data.template 'summarize: {dialogue}'`, `--max_iters 500`,
`--model.preset tiny-bart`); the YAML file, if given, comes first and the flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses

from lmforge.train.finetune_config import config_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="a run config (see configs/)")
    parser.add_argument("--quiet", action="store_true", help="print nothing while training")
    group = parser.add_argument_group("config keys (override the YAML file)")
    for key, (_kind, f) in config_keys().items():
        flags = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(*flags, dest=f"set:{key}", default=argparse.SUPPRESS, metavar="VALUE",
                           help=f"{f.metadata.get('help', '')} (default: {default})".strip())


def run(args: argparse.Namespace) -> int:
    from lmforge.train.finetune import finetune
    from lmforge.train.finetune_config import load_finetune_config

    overrides = {name[4:]: value for name, value in vars(args).items() if name.startswith("set:")}
    config = load_finetune_config(args.config, overrides)
    result = finetune(config, quiet=args.quiet)
    value = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    print(f"best {result.best_metric} {value} at iter {result.best_iter}: {result.best_dir}")
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}, loss curve: {result.run_dir / 'loss.png'}")
    print(f"evaluate with: lmforge evaluate {result.best_dir} --data {config.data.val}")
    return 0
