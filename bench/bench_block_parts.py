"""What each part of the Llama-style block costs in the shakespeare-char-cpu training step.

The recipe's block differs from nanoGPT's GPT-2 block in three parts: RMSNorm instead of LayerNorm,
rotary instead of learned positions, SwiGLU instead of GELU. This script builds the recipe's model
(4 x 4 x 128, block 64, batch 12, vocab 65) with each part swapped back to its GPT-2 counterpart, plus
the GPT-2 block itself and the nanoGPT-style reference of bench_shakespeare.py, and times one training
step of each (forward, loss, backward, clipping, AdamW with the recipe's settings) on the same batch,
all variants in turn with the order reversed every other round (bench_shakespeare.median_step_times);
it prints the median step times and each variant's speed relative to the reference.

    python bench/bench_block_parts.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_shakespeare import CONFIG, lmforge_step, median_step_times, reference_step  # noqa: E402

from lmforge.config import ModelConfig  # noqa: E402
from lmforge.models.decoder import DecoderLM  # noqa: E402
from lmforge.train import TrainConfig  # noqa: E402

VOCAB = 65
SHAPE = dict(vocab_size=VOCAB, n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, dropout=0.0)
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
    cfg = TrainConfig.load(CONFIG)
    torch.manual_seed(0)
    steps = {"nanoGPT-style reference": reference_step(cfg, VOCAB)}
    for name, (family, knobs) in VARIANTS.items():
        steps[name] = lmforge_step(DecoderLM(ModelConfig.for_family(family, **SHAPE, **knobs)), cfg)
    x, y = torch.randint(0, VOCAB, (12, 64)), torch.randint(0, VOCAB, (12, 64))
    med = median_step_times(steps, [(x, y)] * args.rounds, warmup=5)
    base = med["nanoGPT-style reference"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, median step times")
    for name, seconds in med.items():
        print(f"  {name:26s} {seconds * 1e3:6.2f} ms   speed vs reference {base / seconds:.3f}x")


if __name__ == "__main__":
    main()
