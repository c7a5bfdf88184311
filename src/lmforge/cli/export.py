"""`lmforge export gguf MODEL OUT.gguf`: write a GPT-2 or Llama-family model to GGUF, llama.cpp's format."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["gguf"], help="the format to write (gguf: llama.cpp)")
    p.add_argument("model", help="a Hugging Face or lmforge model folder (float or quantized), or a Hub name")
    p.add_argument("out", help="the file to write, e.g. model.gguf (replaced atomically if it exists)")
    p.add_argument("--type", choices=["f32", "f16", "q8_0"], default="f32",
                   help="how matrices are stored: f32 (default), f16, or q8_0 (llama.cpp's 8-bit blocks of 32)")


def run(args: argparse.Namespace) -> int:
    import lmforge
    from lmforge.quant.gguf_export import write_gguf

    ckpt = lmforge.load(args.model, dtype="float32")
    path = write_gguf(ckpt.model, ckpt.tokenizer, args.out, args.type)
    print(f"wrote {path} ({ckpt.model.config.family}, {args.type}, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0
