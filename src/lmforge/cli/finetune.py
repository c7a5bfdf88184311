"""`lmforge finetune [--config FILE.yaml] [--KEY VALUE ...]`: fine-tune on source/target pairs, seq2seq or
prompt->completion (see cli/run_config.py for the command line shared by the training verbs)."""

from __future__ import annotations

import argparse

from lmforge.cli import run_config
from lmforge.train.pairs import FinetuneConfig, finetune


def add_arguments(p: argparse.ArgumentParser) -> None:
    run_config.add_arguments(p, FinetuneConfig)


def run(args: argparse.Namespace) -> int:
    config = run_config.load_from_args(args, FinetuneConfig)
    result = finetune(config, resume=args.resume, quiet=args.quiet)
    value = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    print(f"best {result.best_metric} {value} at iter {result.best_iter}: {result.best_dir}")
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}, loss curve: {result.run_dir / 'loss.png'}")
    model = f"{config.init_from} --adapter {result.best_dir}" if config.adapter.enabled else result.best_dir
    print(f"evaluate with: lmforge evaluate {model} --data {config.data.val}")
    return 130 if result.stopped == "interrupted" else 0
