"""`lmforge scale --config FILE`: the scaling-law lab (a grid of sizes × budgets, the fits, a prediction and its
check, and a report); see scale/sweep.py for the config and configs/scaling-cpu.yaml for a recipe."""

from __future__ import annotations

import argparse

from lmforge.scale.costs import parse_amount


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the lab's YAML config (e.g. configs/scaling-cpu.yaml)")
    p.add_argument("--out-dir", help="the lab's folder (default: the config's out_dir)")
    p.add_argument("--predict", help="compute of the predicted run in FLOPs (default: 4 × the largest budget)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                   help="train the predicted run and compare its loss (default: the config's check)")
    p.add_argument("--workers", type=int, help="run the grid as this many subprocesses sharing the cores")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap samples of the fits (default 100)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
    from lmforge.scale.lab import run_lab
    from lmforge.scale.sweep import load_lab_config

    predict = parse_amount(args.predict, "--predict") if args.predict else None
    lab = load_lab_config(args.config, {"out_dir": args.out_dir, "workers": args.workers})
    result = run_lab(lab, check=args.check, predict_compute=predict, bootstrap=args.bootstrap,
                     quiet=args.quiet)
    return 130 if result.interrupted else 0
