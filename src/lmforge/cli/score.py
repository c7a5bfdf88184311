"""`lmforge score MODEL --text T | --file F`: per-token log-probabilities, log-likelihood, perplexity; for a reward
model (`lmforge reward`), the reward of the text (after --prompt, if given)."""

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
    parser.add_argument("--prompt", default="", help="a reward model: the prompt the text responds to (an "
                        "encoder-decoder reads it as its source; a decoder-only model reads prompt + text)")


def run(args: argparse.Namespace) -> int:
    from lmforge.align.reward_model import is_reward_folder
    from lmforge.generate.score import score_text

    text = read_text_file(args.file, "text file") if args.file else args.text
    if is_reward_folder(args.model):
        return print_reward(args, text)
    ckpt = load_checkpoint(args)
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


def print_reward(args: argparse.Namespace, text: str) -> int:
    from lmforge.align.reward_model import load_reward_model, score_texts
    from lmforge.errors import LmforgeError

    if args.adapter:
        raise LmforgeError(f"{args.model} is a reward model; it takes no --adapter")
    model, tokenizer = load_reward_model(args.model, device=args.device)
    if tokenizer is None:
        raise LmforgeError(f"{args.model} has no tokenizer (tokenizer.json or vocab.json); save one in the folder")
    reward = score_texts(model, tokenizer, [args.prompt], [text])[0]
    print(json.dumps({"reward": reward}) if args.json else f"reward: {reward:.6f}")
    return 0
