"""`lmforge decode-compare MODEL --prompts FILE`: the decoding lab, as a Markdown and an HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.generate import add_model_argument, load_checkpoint, read_text_file
from lmforge.errors import LmforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmforge.evaluate.decoding_lab import DEFAULT_STRATEGIES, PRESETS

    add_model_argument(parser)
    parser.add_argument("--prompts", required=True, metavar="FILE", help="UTF-8 file, one prompt per line")
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), metavar="SPEC",
                        help=f"presets ({', '.join(PRESETS)}) or name:key=value,... "
                             f"(default: {' '.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-data", metavar="FILE",
                        help="training text (UTF-8) or an n-gram index (.npy) for the 8-gram novelty column")
    parser.add_argument("--out", default="runs/decode-compare", help="report folder (default: runs/decode-compare)")


def load_train_index(path: str, tokenizer):
    import numpy as np

    from lmforge.evaluate import NGramIndex

    if path.endswith(".npy"):
        return NGramIndex.load(path)
    ids = tokenizer.encode(read_text_file(path, "training data file"))
    return NGramIndex.build(np.asarray(ids, dtype=np.int64), n=8)


def run(args: argparse.Namespace) -> int:
    from lmforge.evaluate.decoding_lab import compare_strategies, render_markdown, write_report

    ckpt = load_checkpoint(args)
    prompts = [line for line in read_text_file(args.prompts, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise LmforgeError(f"the prompts file {args.prompts} has no prompts; write one per line")
    index = load_train_index(args.train_data, ckpt.tokenizer) if args.train_data else None
    results = compare_strategies(ckpt, None, prompts, args.strategies, train_index=index,
                                 max_new_tokens=args.max_new_tokens, seed=args.seed)
    paths = write_report(results, args.out, title=f"Decoding lab: {Path(args.model).name}")
    table = render_markdown(results, "").split("## Metrics", 1)[1].split("![metrics]", 1)[0].strip()
    print(table)
    print(f"\nreport: {paths['html']}  ({paths['markdown'].name}, {paths['plot'].name}, {paths['json'].name})")
    return 0
