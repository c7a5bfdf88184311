"""`lmforge ppo [--config FILE.yaml] [--KEY VALUE ...]`: align a policy with PPO against a reward model, with a
KL penalty to the reference (see cli/run_config.py for the command line shared by the training verbs)."""

from __future__ import annotations

import argparse

from lmforge.cli import run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lmforge.align.ppo import PPOConfig

    run_config.add_arguments(p, PPOConfig)


def run(args: argparse.Namespace) -> int:
    from lmforge.align.ppo import PPOConfig, train_ppo

    config = run_config.load_from_args(args, PPOConfig)
    result = train_ppo(config, resume=args.resume, quiet=args.quiet)
    return run_config.finish(result, f"metrics: {result.run_dir / 'metrics.jsonl'}, rollouts: "
                                     f"{result.run_dir / 'samples.txt'}; generate with: lmforge generate "
                                     f"{run_config.trained_model(config, result)}")
