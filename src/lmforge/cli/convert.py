"""`lmforge convert SRC DST`: rewrite a checkpoint folder as safetensors, optionally in another dtype, or with
its linear layers quantized (`--quantize int8|int4`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.hub.hf import DTYPES, load_folder, save_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a Hugging Face or lmforge model folder (.safetensors, sharded, or .bin), or a Hub name")
    p.add_argument("dst", help="the folder to write (replaced atomically if it exists)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as stored)")
    add_quantize_arguments(p, "store the linear layers' weights as integers")


def add_quantize_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """--quantize, --group-size, --quantize-head: shared by convert and the verbs that load a model."""
    q = p.add_argument_group("quantization (weight-only; README: Quantize a model)")
    q.add_argument("--quantize", choices=["int8", "int4"],
                   help=f"{what}: int8 (a scale per output channel) or int4 (a scale per group of inputs)")
    q.add_argument("--group-size", type=int, help="int4: inputs per scale, 32 (default), 64, 128 or 256")
    q.add_argument("--quantize-head", action="store_true",
                   help="quantize the output head too (default: it stays float, as the embeddings do)")


def run(args: argparse.Namespace) -> int:
    from lmforge.quant import quantization_config, quantize_model
    from lmforge.quant.model import is_quantized

    if Path(args.src).resolve() == Path(args.dst).resolve():
        raise LmforgeError("SRC and DST are the same folder; write the converted checkpoint somewhere else")
    if not args.quantize and (args.group_size or args.quantize_head):
        raise LmforgeError("--group-size and --quantize-head apply only with --quantize int8|int4")
    ckpt = load_folder(args.src, dtype=args.dtype if args.quantize else None)
    if args.quantize:
        if is_quantized(ckpt.model):
            bits = quantization_config(ckpt.model)["bits"]
            raise LmforgeError(f"{args.src} is already quantized (int{bits}); quantize its float original instead")
        names = quantize_model(ckpt.model, args.quantize, args.group_size, head=args.quantize_head)
        save_folder(ckpt.model, args.dst, tokenizer=ckpt.tokenizer, generation_config=ckpt.generation_config)
        group = f", groups of {ckpt.model.get_submodule(names[0]).group_size}" if args.quantize == "int4" else ""
        print(f"wrote {args.dst} ({len(names)} linear layers {args.quantize}{group}"
              f"{', output head included' if args.quantize_head else ''}; model.safetensors)")
        return 0
    save_folder(ckpt.model, args.dst, tokenizer=ckpt.tokenizer, generation_config=ckpt.generation_config,
                dtype=args.dtype if not is_quantized(ckpt.model) else None)
    print(f"wrote {args.dst} ({ckpt.model.num_parameters():,} parameters, "
          f"{args.dtype or ckpt.stored_dtype}, model.safetensors)")
    return 0
