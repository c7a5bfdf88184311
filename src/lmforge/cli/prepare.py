"""`lmforge prepare SOURCE`: tokenize a corpus once into memory-mapped train/validation token files."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.data.corpus import ERRORS, TEXT_DATASETS
from lmforge.data.prepare import prepare


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=f"a text file, a folder of them, a .jsonl or .parquet file, a named data set "
                                   f"({', '.join(TEXT_DATASETS)}: $LMFORGE_DATA, else downloaded once), or a Hub "
                                   "data set id (owner/name[:subset/split])")
    p.add_argument("--out", help="the folder to write (default: data/<source name>-<tokenizer>)")
    p.add_argument("--tokenizer", default="char",
                   help="char or bpe (trained on the corpus), or a tokenizer.json / tokenizer or model folder "
                        "(default: char)")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of a trained bpe (default: 8192)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the tokens held out for validation, taken from the end (default: 0.1)")
    p.add_argument("--text-field", default="text", help="the text field of JSON Lines records (default: text)")
    p.add_argument("--errors", choices=ERRORS, default="strict",
                   help="non-UTF-8 bytes: stop and name them (strict), or replace/ignore them")


def default_out(source: str, tokenizer: str) -> Path:
    name = Path(source.rstrip("/")).stem or "corpus"
    kind = tokenizer if tokenizer in ("char", "bpe") else Path(tokenizer.rstrip("/")).stem
    return Path("data") / f"{name}-{kind}"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out(args.source, args.tokenizer)
    prepare(args.source, out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, val_fraction=args.val_fraction,
            text_field=args.text_field, errors=args.errors, log=print)
    return 0
