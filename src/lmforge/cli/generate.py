"""`lmforge generate MODEL`: greedy, sampling, beam, diverse beam or contrastive decoding of a prompt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmforge.errors import LmforgeError


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_early_stopping(text: str) -> bool | str:
    if text.strip().lower() == "never":
        return "never"
    try:
        return parse_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}") from None


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="model folder (Hugging Face or lmforge) or Hub name (gpt2, facebook/opt-125m@main)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--max-memory", metavar="SIZE", help="refuse a model estimated to need more memory than "
                        "this (512MB, 8GiB; default: what the device has available)")
    parser.add_argument("--adapter", metavar="DIR",
                        help="a PEFT adapter folder (LoRA, prefix or prompt tuning) to apply to MODEL, e.g. the best/ "
                             "checkpoint of a run with adapter.method")
    from lmforge.cli.convert import add_quantize_arguments

    add_quantize_arguments(parser, "quantize MODEL's linear layers at load")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """transformers' GenerationConfig parameters as flags; unset ones come from generation_config.json."""
    g = parser.add_argument_group("decoding (transformers' GenerationConfig names)")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--min-new-tokens", type=int)
    g.add_argument("--do-sample", type=parse_bool, nargs="?", const=True, metavar="BOOL")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--typical-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--num-beams", type=int)
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--early-stopping", type=parse_early_stopping, nargs="?", const=True, metavar="true|false|never")
    g.add_argument("--num-return-sequences", type=int)
    g.add_argument("--num-beam-groups", type=int)
    g.add_argument("--diversity-penalty", type=float)
    g.add_argument("--penalty-alpha", type=float)
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--ignore-eos", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="never stop at the EOS token")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    g.add_argument("--truncate", choices=["left"], help="drop the start of a prompt too long for the context")
    g.add_argument("--bos", action="store_true", help="prepend the BOS token to the prompt")


DECODING_FLAGS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "typical_p",
                  "min_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty",
                  "early_stopping", "num_return_sequences", "num_beam_groups", "diversity_penalty", "penalty_alpha")


def decoding_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {name: getattr(args, name) for name in DECODING_FLAGS if getattr(args, name) is not None}
    if args.stop:
        kwargs["stop_strings"] = args.stop
    return kwargs


def read_text_file(path: str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"{what} {p} does not exist")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{what} {p} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None


def load_checkpoint(args: argparse.Namespace, need_tokenizer: bool = True):
    import lmforge
    from lmforge.hub.hf import require_finite_weights
    from lmforge.memory import check_generation

    sequences = (getattr(args, "num_beams", None) or 1) * (getattr(args, "num_return_sequences", None) or 1) * \
        (getattr(args, "batch_size", None) or getattr(args, "max_batch", None) or 1)
    check_generation(args.model, sequences, args.max_memory, args.device)
    ckpt = lmforge.load(args.model, device=args.device, adapter=args.adapter, quantize=args.quantize,
                        group_size=args.group_size, quantize_head=args.quantize_head)
    require_finite_weights(ckpt.model, args.adapter or args.model)
    if need_tokenizer and ckpt.tokenizer is None:
        raise LmforgeError(f"{args.model} has no tokenizer (tokenizer.json or vocab.json); save one in the folder")
    return ckpt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="prompt text (default: generate from the BOS/EOS token)")
    source.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file")
    add_decoding_arguments(parser)
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--best-of", type=int, metavar="N",
                        help="sample N responses and print the one --reward-model scores highest (best-of-n)")
    parser.add_argument("--reward-model", metavar="RM", help="the reward model folder of --best-of")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decoding step with torch.compile (decoder-only models): faster per token "
                             "after a compilation of seconds to tens of seconds")


def run(args: argparse.Namespace) -> int:
    from lmforge.generate.api import Generator

    if args.stream and args.json:
        raise LmforgeError("--stream and --json cannot be combined; choose one")
    prompt = read_text_file(args.prompt_file, "prompt file") if args.prompt_file else args.prompt
    if args.best_of is not None or args.reward_model is not None:
        return print_best_of_n(args, prompt)
    gen = Generator(load_checkpoint(args))
    options = dict(decoding_kwargs(args), seed=args.seed, ignore_eos=args.ignore_eos, truncate=args.truncate,
                   add_bos=args.bos, compile=args.compile)
    if args.stream:
        sys.stdout.write(prompt or "")
        for piece in gen.stream(prompt, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    result = gen.generate(prompt, **options)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    completions = result.completions[0]
    for i, c in enumerate(completions):
        if len(completions) > 1:
            print(f"--- {i + 1} (score {c.score:.4f}) ---")
        print((prompt or "") + c.text)
    return 0


def print_best_of_n(args: argparse.Namespace, prompt: str | None) -> int:
    from lmforge.align.best_of_n import best_of_n

    if args.best_of is None or args.reward_model is None:
        raise LmforgeError("best-of-n needs both --best-of N and --reward-model RM")
    if args.stream:
        raise LmforgeError("--best-of cannot stream: every candidate must be finished before one is chosen")
    options = dict(decoding_kwargs(args), ignore_eos=args.ignore_eos, truncate=args.truncate, add_bos=args.bos)
    options.pop("num_return_sequences", None)
    pick = best_of_n(load_checkpoint(args), args.reward_model, prompt or "", args.best_of, seed=args.seed,
                     **options)[0]
    if args.json:
        print(json.dumps(pick.to_dict(), ensure_ascii=False))
    else:
        print(f"--- best of {args.best_of} (reward {pick.best.reward:.4f}) ---")
        print((prompt or "") + pick.best.text)
    return 0
