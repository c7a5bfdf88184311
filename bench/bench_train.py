"""Training speed: lmforge's DecoderLM against transformers' GPT2LMHeadModel, side by side in one process.

The shape is GPT-2 with 6 layers, 6 heads, 384 dimensions, a 256-token context, batch 8 and a 65-token
(character) vocabulary; both models have biases, tied embeddings and no dropout. Every variant runs
the same training step: forward, cross-entropy, backward, gradient clipping at 1.0 and AdamW
(lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices; the fused kernel, transformers' Trainer default
since torch 2.8) on the same batches. Variants are timed in turns, rotating the order each
repetition, so drifting load on a shared machine hits all of them alike; we report medians.

The variant `matmul_floor` times only the matrix products of that step (see matmul_floor_variant):
how close to the hardware's limit both implementations are.

    python bench/bench_train.py [--reps 7] [--steps 3] [--threads 2] [--variants hf,ours,ours_compile,matmul_floor]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.losses import cross_entropy
from lmforge.models.decoder import DecoderLM
from lmforge.train.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import cpu_name  # noqa: E402

SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 65}
BATCH = 8
ADAMW = {"learning_rate": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.99)}


def hf_model() -> torch.nn.Module:
    import transformers

    cfg = transformers.GPT2Config(vocab_size=SHAPE["vocab_size"], n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"],
                                  n_embd=SHAPE["n_embd"], n_positions=SHAPE["block_size"], resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).train()


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def ours_model() -> torch.nn.Module:
    cfg = ModelConfig.for_family("gpt2", **SHAPE, bias=True, dropout=0.0)
    return DecoderLM(cfg).train()


def matmul_floor_variant():
    """Not a model: only the matrix products of the same shape's forward and backward (the linear layers
    in nn.Linear's layout, causal SDPA attention, the tied output head). No norms, activations,
    residuals, loss or optimizer: a lower bound on the step time of any float32 implementation built
    on the same kernels."""
    C, H, L, T, V = SHAPE["n_embd"], SHAPE["n_head"], SHAPE["n_layer"], SHAPE["block_size"], SHAPE["vocab_size"]
    torch.manual_seed(0)
    shapes = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * L
    weights = [(torch.randn(s) * 0.02).requires_grad_() for s in shapes]
    head = (torch.randn(V, C) * 0.02).requires_grad_()
    F = torch.nn.functional

    def step(x, y):
        h = torch.randn(BATCH, T, C, requires_grad=True)  # stands in for the embeddings (< 0.5 % of the step)
        for i in range(L):
            w_qkv, w_o, w_fc, w_proj = weights[4 * i:4 * i + 4]
            q, k, v = F.linear(h, w_qkv).view(BATCH, T, 3 * H, C // H).transpose(1, 2).split(H, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(BATCH, T, C)
            h = F.linear(F.linear(F.linear(a, w_o), w_fc), w_proj)
        F.linear(h, head).sum().backward()
        for w in weights + [head]:
            w.grad = None

    return None, step


def lm_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of the language-modelling task (train/lm.py)."""
    return cross_entropy(module(x), y)[0]


def make_variant(name: str):
    """(model, step function) for a variant name."""
    if name == "matmul_floor":
        return matmul_floor_variant()
    torch.manual_seed(0)
    model = hf_model() if name.startswith("hf") else ours_model()
    loss_fn = hf_loss if name.startswith("hf") else lm_loss
    forward = torch.compile(model) if "compile" in name else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in name else torch.autocast("cpu", enabled=False)
    opt = make_optimizer(model, ADAMW["learning_rate"], ADAMW["weight_decay"], ADAMW["betas"], "cpu")

    def step(x, y):
        with autocast:
            loss = loss_fn(forward, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, SHAPE["vocab_size"], (n, BATCH, SHAPE["block_size"] + 1), generator=g)
    return [(d[:, :-1], d[:, 1:]) for d in data]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="hf,ours,ours_compile,ours_bf16")
    parser.add_argument("--out", default="bench/results/train_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    names = args.variants.split(",")
    data = batches(args.steps)
    variants, setup_s = {}, {}
    for name in names:
        start = time.perf_counter()
        _, step = make_variant(name)
        for _ in range(args.warmup):  # compiles on the first call
            step(*data[0])
        variants[name] = step
        setup_s[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: ready in {setup_s[name]} s", flush=True)
    tokens = args.steps * BATCH * SHAPE["block_size"]
    rates = {name: [] for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            start = time.perf_counter()
            for x, y in data:
                variants[name](x, y)
            rates[name].append(tokens / (time.perf_counter() - start))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}" for n in names), flush=True)
    medians = {n: statistics.median(r) for n, r in rates.items()}
    base = medians.get("hf")
    result = {
        "benchmark": "training tokens/s, lmforge DecoderLM vs transformers GPT2LMHeadModel",
        "shape": {**SHAPE, "batch_size": BATCH, "bias": True, "dropout": 0.0},
        "optimizer": "torch.optim.AdamW(fused=True) lr 1e-3 betas (0.9, 0.99) weight decay 0.1, grad clip 1.0",
        "threads": args.threads, "reps": args.reps, "steps_per_rep": args.steps,
        "tokens_per_sec_median": {n: round(v, 1) for n, v in medians.items()},
        "tokens_per_sec_all": {n: [round(v, 1) for v in r] for n, r in rates.items()},
        "ratio_vs_hf_median": {n: round(v / base, 3) for n, v in medians.items()} if base else {},
        "ratio_vs_hf_per_rep_median": ({n: round(statistics.median(a / b for a, b in zip(rates[n], rates["hf"])), 3)
                                        for n in names} if base else {}),
        "setup_s": setup_s,
        "load_average_before_after": [load_before, os.getloadavg()],
        "machine": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
    }
    print(json.dumps({k: result[k] for k in ("tokens_per_sec_median", "ratio_vs_hf_median")}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
