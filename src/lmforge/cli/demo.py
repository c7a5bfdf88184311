"""`lmforge demo`: train a small GPT offline, compare decoding strategies, write a report."""

from __future__ import annotations

import argparse
import shutil

from lmforge.demo import DEFAULT_MINUTES, run_demo
from lmforge.errors import LmforgeError
from lmforge.fsutil import first_missing


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a text file, a folder of them, a .jsonl file or a named data set "
                                  "(default: the docstrings of Python's standard library)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"training budget in minutes (default {DEFAULT_MINUTES:g})")
    p.add_argument("--out", default="runs/demo", help="the run folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per prompt and strategy")
    p.add_argument("--quiet", action="store_true", help="print only the report's path")


def run(args: argparse.Namespace) -> int:
    if args.minutes <= 0:
        raise LmforgeError(f"--minutes must be positive, got {args.minutes}")
    created = first_missing(args.out)
    try:
        result = run_demo(args.out, data=args.data, minutes=args.minutes, seed=args.seed,
                          max_new_tokens=args.max_new_tokens, quiet=args.quiet)
    except LmforgeError:
        if created is not None:  # nothing half-made is left behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    if args.quiet:
        print(result.report)
    return 0
