"""`lmforge info PATH|NAME`: what a checkpoint folder or Hub model holds."""

from __future__ import annotations

import argparse
import json

from lmforge.hub.hf import load_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a Hugging Face or lmforge model folder, or a Hub name (gpt2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def describe(path: str) -> dict:
    ckpt = load_folder(path, dtype=None)
    model, cfg = ckpt.model, ckpt.model.config
    context = getattr(cfg, "block_size", None) or getattr(cfg, "max_position_embeddings", None)
    return {
        "path": str(path),
        "family": cfg.family,
        "architecture": "encoder-decoder" if getattr(model, "is_encoder_decoder", False) else "decoder-only",
        "parameters": model.num_parameters() + _quantized_weights(model),
        "context_length": context,
        "vocab_size": cfg.vocab_size,
        "dtype": ckpt.stored_dtype,
        "tokenizer": ckpt.tokenizer.kind if ckpt.tokenizer is not None else None,
        "tokenizer_vocab_size": ckpt.tokenizer.vocab_size if ckpt.tokenizer is not None else None,
        "quantization": _quantization(model),
    }


def _quantized_weights(model) -> int:
    """Weights held as integers (quantized layers), which are buffers, not parameters."""
    from lmforge.quant import quantized_layers

    return sum(layer.in_features * layer.out_features for layer in quantized_layers(model).values())


def _quantization(model) -> dict | None:
    from lmforge.quant import is_quantized, quantization_config

    return quantization_config(model) if is_quantized(model) else None


def run(args: argparse.Namespace) -> int:
    info = describe(args.path)
    if args.json:
        print(json.dumps(info))
        return 0
    millions = info["parameters"] / 1e6
    print(f"{info['path']}")
    print(f"  family        {info['family']} ({info['architecture']})")
    print(f"  parameters    {info['parameters']:,} ({millions:.2f} M)")
    print(f"  context       {info['context_length']} tokens")
    print(f"  vocabulary    {info['vocab_size']:,}")
    print(f"  dtype         {info['dtype']}")
    q = info["quantization"]
    if q:
        group = f", groups of {q['group_size']} inputs" if q["group_size"] else ", a scale per output channel"
        print(f"  quantization  int{q['bits']} weights{group} ({len(q['modules'])} linear layers"
              f"{', output head included' if 'lm_head' in q['modules'] else ''})")
    tok = info["tokenizer"]
    print(f"  tokenizer     {tok + ' (' + format(info['tokenizer_vocab_size'], ',') + ' tokens)' if tok else 'none'}")
    return 0
