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
    return run_config.finish(result, f"metrics: {result.run_dir / 'metrics.jsonl'}, loss curve: {result.run_dir / 'loss.png'}",
                             f"evaluate with: lmforge evaluate {run_config.trained_model(config, result)} "
                             f"--data {config.data.val}")
