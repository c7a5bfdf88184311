"""`lmforge merge BASE ADAPTER OUT`: fold a LoRA adapter into its base model and write a plain model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.hub.hf import DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="the base model: a Hugging Face or lmforge model folder, or a Hub name")
    p.add_argument("adapter", help="a LoRA adapter folder (PEFT's format), e.g. the best/ checkpoint of a LoRA run")
    p.add_argument("out", help="the model folder to write (transformers loads it; replaced atomically if it exists)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as the base)")


def run(args: argparse.Namespace) -> int:
    import lmforge
    from lmforge.adapt.peft_format import read_folder

    if Path(args.out).resolve() in (Path(args.base).resolve(), Path(args.adapter).resolve()):
        raise LmforgeError("OUT is the base or the adapter folder; write the merged model somewhere else")
    method = read_folder(args.adapter)[0].method
    if method != "lora":
        raise LmforgeError(f"{args.adapter} is a {method}-tuning adapter, whose virtual tokens cannot be merged into "
                           "the weights; only LoRA adapters merge (use it with --adapter instead)")
    ckpt = lmforge.load(args.base, dtype=None, adapter=args.adapter)
    ckpt.merge_adapter()
    lmforge.save(ckpt.model, args.out, tokenizer=ckpt.tokenizer, generation_config=ckpt.generation_config,
                 dtype=args.dtype)
    print(f"wrote {args.out}: {args.base} with the LoRA adapter {args.adapter} merged "
          f"({ckpt.model.num_parameters():,} parameters)")
    return 0
