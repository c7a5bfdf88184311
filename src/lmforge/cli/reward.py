"""`lmforge reward [--config FILE.yaml] [--KEY VALUE ...]`: train a reward model on preference pairs (see
cli/run_config.py for the command line shared by the training verbs)."""

from __future__ import annotations

import argparse

from lmforge.cli import run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lmforge.align.reward import RewardConfig

    run_config.add_arguments(p, RewardConfig)


def run(args: argparse.Namespace) -> int:
    from lmforge.align.reward import RewardConfig, train_reward

    config = run_config.load_from_args(args, RewardConfig)
    result = train_reward(config, resume=args.resume, quiet=args.quiet)
    return run_config.finish(result, f"metrics: {result.run_dir / 'metrics.jsonl'}; score a text with: lmforge score "
                                     f"{result.best_dir} --text TEXT --json")
