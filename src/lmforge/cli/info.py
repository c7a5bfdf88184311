"""`lmforge info PATH|NAME` or `lmforge info --preset NAME`: what a model holds and what it costs.

Parameters (total and without embeddings), training FLOPs per token, memory of training, KV cache per token;
with --tokens, the compute of a training run in FLOPs and PF-days and its time at --flops-per-second.
"""

from __future__ import annotations

import argparse
import json

from lmforge.errors import LmforgeError
from lmforge.scale.costs import (
    BYTES,
    human,
    human_bytes,
    human_duration,
    measure_flops_per_second,
    model_costs,
    parse_amount,
    training_compute,
)
from lmforge.scale.presets import GPT_FAMILY, preset_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="a Hugging Face or lmforge model folder, or a Hub name (gpt2)")
    p.add_argument("--preset", help="a named shape instead of a folder: openai-gpt, gpt2[-medium|-large|-xl], "
                                    "gpt3-125m ... gpt3-175b, tiny-gpt2, tiny-llama")
    p.add_argument("--tokens", help="training tokens (3e11 or 300B): the run's compute, in FLOPs, PF-days and time")
    p.add_argument("--flops-per-second", help="the throughput for the time of --tokens (default: measured on this "
                                              "machine by a short float32 matmul probe)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def describe(path: str) -> dict:
    from lmforge.hub.hf import load_folder, non_finite_weights

    ckpt = load_folder(path, dtype=None)
    model, cfg = ckpt.model, ckpt.model.config
    context = getattr(cfg, "block_size", None) or getattr(cfg, "max_position_embeddings", None)
    return {
        "path": str(path),
        "family": cfg.family,
        "architecture": "encoder-decoder" if getattr(model, "is_encoder_decoder", False) else "decoder-only",
        "parameters": model.num_parameters(),
        "context_length": context,
        "vocab_size": cfg.vocab_size,
        "dtype": ckpt.stored_dtype,
        "tokenizer": ckpt.tokenizer.kind if ckpt.tokenizer is not None else None,
        "tokenizer_vocab_size": ckpt.tokenizer.vocab_size if ckpt.tokenizer is not None else None,
        "non_finite_weights": non_finite_weights(model),  # tensor -> how many NaN or infinite values it holds
        "quantization": _quantization(model),
        "_config": cfg,
    }


def _quantization(model) -> dict | None:
    from lmforge.quant import is_quantized, quantization_config

    return quantization_config(model) if is_quantized(model) else None


def describe_preset(name: str) -> dict:
    cfg = preset_config(name)
    known = GPT_FAMILY.get(name)
    return {"preset": name, "model": known.model if known else name, "family": cfg.family,
            "architecture": "decoder-only", "paper_parameters": known.paper_parameters if known else None,
            "note": known.note if known else "", "context_length": cfg.block_size, "vocab_size": cfg.vocab_size,
            "_config": cfg}


def run(args: argparse.Namespace) -> int:
    if (args.path is None) == (args.preset is None):
        raise LmforgeError("give a model folder or Hub name, or --preset NAME (one of the two)")
    info = describe_preset(args.preset) if args.preset else describe(args.path)
    costs = model_costs(info.pop("_config"))
    info["parameters"] = costs.parameters
    info["costs"] = costs.to_dict()
    if args.tokens is not None:
        tokens = parse_amount(args.tokens, "--tokens")
        if args.flops_per_second is not None:
            speed, source = parse_amount(args.flops_per_second, "--flops-per-second"), "given"
        else:
            speed, source = measure_flops_per_second(), "measured by a float32 matmul probe on this machine"
        info["training"] = {**training_compute(costs, tokens, speed).to_dict(), "flops_per_second_source": source}
    if args.json:
        print(json.dumps(info))
        return 0
    print_info(info)
    return 0


def print_info(info: dict) -> None:
    c = info["costs"]
    print(info.get("path") or f"{info['preset']} ({info['model']})")
    print(f"  family        {info['family']} ({info['architecture']})")
    print(f"  shape         {c['n_layer']} layers × {c['n_embd']} wide, {c['n_head']} heads of {c['head_dim']}")
    paper = f" (the paper says {info['paper_parameters']})" if info.get("paper_parameters") else ""
    print(f"  parameters    {c['parameters']:,} ({human(c['parameters'])}){paper}")
    print(f"    without embeddings {c['parameters_without_embeddings']:,} ({human(c['parameters_without_embeddings'])})")
    print(f"  context       {info['context_length']} tokens")
    print(f"  vocabulary    {info['vocab_size']:,}")
    if "dtype" in info:
        print(f"  dtype         {info['dtype']}")
        tok = info["tokenizer"]
        print(f"  tokenizer     {tok + ' (' + format(info['tokenizer_vocab_size'], ',') + ' tokens)' if tok else 'none'}")
        q = info["quantization"]
        if q:
            group = f", groups of {q['group_size']} inputs" if q["group_size"] else ", a scale per output channel"
            print(f"  quantization  int{q['bits']} weights{group} ({len(q['modules'])} linear layers"
                  f"{', output head included' if 'lm_head' in q['modules'] else ''})")
        bad = info["non_finite_weights"]
        if bad:
            print(f"  weights       NOT FINITE: {sum(bad.values()):,} NaN or infinite values in {len(bad)} tensor(s): "
                  f"{', '.join(list(bad)[:3])}{', ...' if len(bad) > 3 else ''}; generate and score refuse this model")
        else:
            print("  weights       finite")
    if info.get("note"):
        print(f"  note          {info['note']}")
    print(f"  training FLOPs per token: 6N = {c['flops_per_token_6n']:.4g}; with attention at {c['context']} "
          f"context (Kaplan et al. Table 1) = {c['flops_per_token_kaplan']:.4g}")
    print("  training memory               weights  gradients      AdamW      total")
    for dtype, m in c["memory"].items():
        label = dtype if dtype != "mixed" else "mixed (bf16, fp32 states)"
        print(f"    {label:<25} " + "  ".join(f"{human_bytes(m[k]):>9}" for k in ("weights", "gradients", "adamw", "total")))
    kv = c["kv_cache_per_token"]
    print("  KV cache per token     " + ", ".join(f"{human_bytes(kv[d])} ({d})" for d in BYTES)
          + f"; {human_bytes(kv['bfloat16'] * c['context'])} for a full context in bfloat16")
    t = info.get("training")
    if t:
        print(f"  training on {human(t['tokens'])} tokens: {t['flops']:.3g} FLOPs (6ND) = {t['pf_days']:,.4g} PF-days; "
              f"{t['flops_kaplan']:.3g} FLOPs with attention")
        print(f"    at {t['flops_per_second']:.3g} FLOP/s ({t['flops_per_second_source']}): "
              f"{human_duration(t['seconds'])}")
