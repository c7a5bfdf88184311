"""`lmforge convert SRC DST`: rewrite a checkpoint folder as safetensors, optionally in another dtype."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.hub.hf import DTYPES, load_folder, save_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a Hugging Face or lmforge model folder (.safetensors, sharded, or .bin), or a Hub name")
    p.add_argument("dst", help="the folder to write (replaced atomically if it exists)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as stored)")


def run(args: argparse.Namespace) -> int:
    if Path(args.src).resolve() == Path(args.dst).resolve():
        raise LmforgeError("SRC and DST are the same folder; write the converted checkpoint somewhere else")
    ckpt = load_folder(args.src, dtype=None)
    save_folder(ckpt.model, args.dst, tokenizer=ckpt.tokenizer, generation_config=ckpt.generation_config,
                dtype=args.dtype)
    print(f"wrote {args.dst} ({ckpt.model.num_parameters():,} parameters, "
          f"{args.dtype or ckpt.stored_dtype}, model.safetensors)")
    return 0
