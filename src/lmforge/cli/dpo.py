"""`lmforge dpo [--config FILE.yaml] [--KEY VALUE ...]`: align a policy with preference pairs by DPO, IPO or the
hinge loss (see cli/run_config.py for the command line shared by the training verbs)."""

from __future__ import annotations

import argparse

from lmforge.cli import run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lmforge.align.dpo import DPOConfig

    run_config.add_arguments(p, DPOConfig)


def run(args: argparse.Namespace) -> int:
    from lmforge.align.dpo import DPOConfig, train_dpo

    config = run_config.load_from_args(args, DPOConfig)
    result = train_dpo(config, resume=args.resume, quiet=args.quiet)
    return run_config.finish(result, f"metrics: {result.run_dir / 'metrics.jsonl'}; generate with: lmforge generate "
                                     f"{run_config.trained_model(config, result)}")
