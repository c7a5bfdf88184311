"""`lmforge train [--config FILE.yaml] [--KEY VALUE ...]`: train a language model from scratch or fine-tune one
on a text corpus (see cli/run_config.py for the command line shared by the training verbs)."""

from __future__ import annotations

import argparse

from lmforge.cli import run_config
from lmforge.train.lm import TrainConfig, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    run_config.add_arguments(p, TrainConfig)


def run(args: argparse.Namespace) -> int:
    result = train(run_config.load_from_args(args, TrainConfig), resume=args.resume, quiet=args.quiet)
    return 130 if result.stopped == "interrupted" else 0
