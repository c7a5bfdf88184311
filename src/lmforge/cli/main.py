"""`lmforge <verb>`: a thin dispatcher. Each verb lives in its own module with `add_arguments` and `run`."""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from lmforge.errors import LmforgeError
from lmforge.fsutil import disk_full
from lmforge.hub import remote

# verb -> (module under lmforge.cli, one-line help)
VERBS = {
    "prepare": ("prepare", "tokenize a corpus once into memory-mapped token files"),
    "train": ("train", "train a language model from scratch or fine-tune one (YAML config + overrides)"),
    "finetune": ("finetune", "fine-tune on source/target pairs (seq2seq or prompt->completion)"),
    "generate": ("generate", "generate text with greedy, beam search or sampling"),
    "score": ("score", "per-token log-probabilities, log-likelihood and perplexity of a text (a reward model: its reward)"),
    "reward": ("reward", "train a reward model on preference pairs (Bradley-Terry)"),
    "dpo": ("dpo", "align a policy with preference pairs by direct preference optimization (DPO, IPO, hinge)"),
    "ppo": ("ppo", "align a policy with PPO against a reward model, with a KL penalty to the reference"),
    "decode-compare": ("decode_compare", "compare decoding strategies on the same prompts, with a report"),
    "evaluate": ("evaluate", "generate for a data set and score it with ROUGE, BLEU, chrF"),
    "convert": ("convert", "rewrite a checkpoint folder (e.g. .bin -> safetensors, change dtype, quantize int8/int4)"),
    "merge": ("merge", "fold a LoRA adapter into its base model and write a plain model folder"),
    "export": ("export", "write a model in another format: gguf (llama.cpp), f32, f16 or q8_0"),
    "info": ("info", "describe a checkpoint folder, Hub model or preset (gpt3-175b): size, costs, context, dtype"),
    "serve": ("serve", "serve a model over an OpenAI-compatible HTTP API, with a playground page"),
    "download": ("download", "fetch a Hub model or data set into the cache ahead of time and print its path"),
    "scale": ("scale", "the scaling-law lab: train a grid of sizes × budgets, fit the laws, predict a bigger run"),
    "demo": ("demo", "train a small GPT offline, compare decoding strategies, write a report"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and one sentence, naming the closest valid flag."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "unrecognized arguments:" in message:
            bad = message.split("unrecognized arguments:", 1)[1].split()
            flags = [s for a in self._actions for s in a.option_strings]
            for b in bad:
                if b.startswith("-"):
                    close = difflib.get_close_matches(b.split("=")[0], flags, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    message = f"unknown option {b}{hint}"
                    break
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmforge", description="lmforge: train, adapt, decode, evaluate language models.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    parser.verb_parsers = {}
    for verb, (module, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        parser.verb_parsers[verb] = p
        try:
            mod = importlib.import_module(f"lmforge.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lmforge.cli.{module}":
                raise
            p.set_defaults(_missing=verb)
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
        hub = p.add_argument_group("Hub names")
        hub.add_argument("--offline", action="store_true",
                         help="read Hub models and data sets from the cache only (as HF_HUB_OFFLINE=1)")
        hub.add_argument("--verbose", action="store_true",
                         help="say where each name resolved to (a local path wins over a Hub name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the verb's parser, which knows the verb's flags and can name the closest
        (parser.verb_parsers.get(args.verb) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.verb is None:
        parser.print_help()
        return 2
    verb_parser = parser.verb_parsers.get(args.verb)
    for action in verb_parser._actions if verb_parser else []:
        # argparse reads `--flag=--` as an empty list for a flag that takes one value
        if action.nargs is None and isinstance(getattr(args, action.dest, None), list):
            verb_parser.error(f"{'/'.join(action.option_strings)} needs a value, not '--'")
    if getattr(args, "_missing", None):
        print(f"lmforge: '{args._missing}' is not available in this version yet.", file=sys.stderr)
        return 2
    try:
        with remote.options(offline=args.offline, verbose=args.verbose):
            return int(args._run(args) or 0)
    except LmforgeError as exc:
        print(f"lmforge {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not disk_full(exc):
            raise
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(f"lmforge {args.verb}: error: the disk is full{where}; free some space and run the command again "
              "(a training run continues with --resume)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
