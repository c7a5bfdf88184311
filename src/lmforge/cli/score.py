"""`lmforge score MODEL --text T | --file F`: per-token log-probabilities, log-likelihood, perplexity."""

from __future__ import annotations

import argparse
import json

from lmforge.cli.generate import add_model_argument, load_checkpoint, read_text_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to score")
    source.add_argument("--file", metavar="F", help="score the contents of a UTF-8 file")
    parser.add_argument("--bos", action="store_true", help="prepend the BOS token so the first token is scored too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from lmforge.generate.score import score_text

    ckpt = load_checkpoint(args)
    text = read_text_file(args.file, "text file") if args.file else args.text
    result = score_text(ckpt.model, ckpt.tokenizer, text, bos=args.bos)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    tokens = [ckpt.tokenizer.decode([t]) for t in result.token_ids]
    print(f"{'token':<20} {'logprob':>10}")
    for token, logprob in zip(tokens[1:], result.token_logprobs):
        print(f"{token!r:<20} {logprob:>10.4f}")
    print(f"tokens scored: {len(result.token_logprobs)}  log-likelihood: {result.log_likelihood:.4f}  "
          f"perplexity: {result.perplexity:.4f}")
    return 0
