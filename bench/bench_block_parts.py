"""What each part of the Llama-style block costs in the shakespeare-char-cpu training step.

The recipe's block differs from nanoGPT's GPT-2 block in three parts: RMSNorm instead of LayerNorm,
rotary instead of learned positions, SwiGLU instead of GELU. This script builds the recipe's model
(4 x 4 x 128, block 64, batch 12, vocab 65) with each part swapped back to its GPT-2 counterpart, plus
the GPT-2 block itself and a nanoGPT-style reference (bench_shakespeare.NanoGPTReference), and times
one training step of each (forward, loss, backward, clipping, AdamW) on the same batch, all variants in
turn with the order reversed every other round; it prints the median step times and each variant's
speed relative to the reference.

    python bench/bench_block_parts.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_shakespeare import NanoGPTReference  # noqa: E402

from lmforge.config import ModelConfig  # noqa: E402
from lmforge.models.decoder import DecoderLM  # noqa: E402
from lmforge.train.optim import make_optimizer  # noqa: E402
from lmforge.train.trainer import lm_loss  # noqa: E402

SHAPE = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, dropout=0.0)
VARIANTS = {
    "llama (the recipe)": ("llama", dict(intermediate_size=344)),
    "llama, LayerNorm": ("llama", dict(intermediate_size=344, norm="layernorm", norm_eps=1e-5)),
    "llama, learned positions": ("llama", dict(intermediate_size=344, position="learned")),
    "llama, GELU MLP 512": ("llama", dict(gated_mlp=False, activation="gelu", intermediate_size=512)),
    "gpt2": ("gpt2", dict()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    steps = {}
    ref = NanoGPTReference(65, 4, 4, 128, 64)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.99))

    def ref_step(x, y):
        ref(x, y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    steps["nanoGPT-style reference"] = ref_step
    for name, (family, knobs) in VARIANTS.items():
        model = DecoderLM(ModelConfig.for_family(family, **SHAPE, **knobs))
        optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), "cpu")

        def step(x, y, model=model, optimizer=optimizer):
            lm_loss(model, x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))
    for step in steps.values():
        for _ in range(5):
            step(x, y)
    times = {name: [] for name in steps}
    names = list(steps)
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name](x, y)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    base = med["nanoGPT-style reference"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, median step times")
    for name, ms in med.items():
        print(f"  {name:26s} {ms:6.2f} ms   speed vs reference {base / ms:.3f}x")


if __name__ == "__main__":
    main()
