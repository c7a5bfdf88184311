"""Quality and wall time of the shakespeare-char-cpu recipe (configs/shakespeare-char-cpu.yaml).

Trains the recipe with `lmforge.train.train` and records the validation loss at iteration 2000 (the
recipe's own estimate: 20 fixed batches, as nanoGPT reports it), the loss over the whole validation
split, and the wall time of the `train()` call (data preparation, evaluations and checkpoints
included). The target is nanoGPT's result on this machine: validation loss 1.886 in about 106 s.
`--nproc 2` trains the same recipe under torchrun instead (two processes of one thread, DDP over gloo,
each with half of the batch; the wall time then includes starting the processes).

The machine is shared, so its speed drifts between runs. `--calibrate` therefore also times the
training step of a nanoGPT-style reference (its model.py and its CPU optimizer, re-implemented here)
against lmforge's step on the same shape, alternating A/B, and reports the ratio of the medians and
the wall time scaled to the reference's speed in the issue (16k tokens/s).

    LMFORGE_DATA=../shared/data python bench/bench_shakespeare.py [--calibrate] [--nproc N] [--override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lmforge
from lmforge.config import ModelConfig
from lmforge.data.tokens import TokenData
from lmforge.losses import cross_entropy
from lmforge.models.decoder import DecoderLM
from lmforge.train import TrainConfig, train
from lmforge.train.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import cpu_name

CONFIG = Path(__file__).parent.parent / "configs" / "shakespeare-char-cpu.yaml"
NANOGPT_VAL_LOSS, NANOGPT_SECONDS, NANOGPT_TOKENS_PER_SEC = 1.886, 106.0, 16000


@torch.no_grad()
def full_split_loss(model: nn.Module, tokens: np.ndarray, block: int, batch: int = 64) -> float:
    """Mean next-token loss over every non-overlapping window of the split."""
    n = (len(tokens) - 1) // block
    total = 0.0
    for start in range(0, n, batch):
        rows = [tokens[i * block:i * block + block + 1].astype(np.int64) for i in range(start, min(n, start + batch))]
        b = torch.from_numpy(np.stack(rows))
        total += cross_entropy(model(b[:, :-1]), b[:, 1:])[1].item() * len(rows)
    return total / n


# --- a nanoGPT-style reference step, for calibrating wall times on a shared machine ----------------

class _RefAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(n_embd, 3 * n_embd, bias=False), nn.Linear(
            n_embd, n_embd, bias=False), n_head

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class _RefBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd, bias=False), nn.LayerNorm(n_embd, bias=False)
        self.attn = _RefAttention(n_embd, n_head)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPTReference(nn.Module):
    """nanoGPT's GPT (bias=False, dropout 0): tied embeddings, N(0, 0.02) init, SDPA attention, exact GELU."""

    def __init__(self, vocab: int, n_layer: int, n_head: int, n_embd: int, block: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block, n_embd)
        self.h = nn.ModuleList(_RefBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def reference_step(cfg, vocab: int):
    """One training step of the nanoGPT-style reference with the recipe's optimizer settings (nanoGPT's CPU
    AdamW: decay on matrices only, the for-loop implementation)."""
    m = cfg.model
    ref = NanoGPTReference(vocab, m.n_layer, m.n_head, m.n_embd, m.block_size)
    groups = [{"params": [p for p in ref.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in ref.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))

    def step(x, y):
        ref(x, y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def lmforge_step(model: nn.Module, cfg):
    """One training step of an lmforge model as the training loop takes it (compiled when the recipe says so)."""
    forward = torch.compile(model) if cfg.compile else model
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), "cpu")

    def step(x, y):
        cross_entropy(forward(x), y)[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def median_step_times(steps: dict, batches: list, warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of each of `steps`, taken in turn on every batch (the order reversed every
    other round, so load that drifts on a shared machine hits all alike)."""
    for step in steps.values():
        for x, y in batches[:warmup]:
            step(x, y)
    names = list(steps)
    times = {name: [] for name in names}
    for i, (x, y) in enumerate(batches):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name](x, y)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def calibrate(cfg, data: TokenData, rounds: int = 60) -> dict:
    """Training-step time of lmforge (as configured) vs the nanoGPT-style reference on the same batches.

    The two alternate step by step for `rounds` rounds, so load that drifts on a shared machine hits both
    alike; the medians of the step times give the ratio.
    """
    m = cfg.model
    vocab = data.tokenizer.vocab_size
    g = torch.Generator().manual_seed(0)

    def batch():  # nanoGPT's get_batch: random windows, stacked from the memory map
        ix = torch.randint(len(data.train) - m.block_size, (cfg.batch_size,), generator=g)
        x = torch.stack([torch.from_numpy(data.train[i:i + m.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data.train[i + 1:i + 1 + m.block_size].astype(np.int64)) for i in ix])
        return x, y

    torch.manual_seed(0)
    ours = DecoderLM(ModelConfig.for_family(
        m.family, vocab_size=vocab, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
        intermediate_size=m.intermediate_size, bias=m.bias, dropout=m.dropout)).train()
    steps = {"nanogpt_reference": reference_step(cfg, vocab), "lmforge": lmforge_step(ours, cfg)}
    med = median_step_times(steps, [batch() for _ in range(rounds)])
    tokens = cfg.batch_size * m.block_size
    return {"tokens_per_sec_median": {k: round(tokens / v, 1) for k, v in med.items()},
            "speedup_vs_nanogpt_step": round(med["nanogpt_reference"] / med["lmforge"], 3),
            "rounds": rounds, "threads": torch.get_num_threads()}


def train_with_torchrun(args: argparse.Namespace, cfg) -> Path:
    """The recipe as `torchrun --standalone --nproc_per_node N -m lmforge.cli.main train ...`, with the
    recipe's global batch split over the N processes (one thread each, torchrun's default)."""
    if cfg.batch_size % args.nproc:
        sys.exit(f"batch_size {cfg.batch_size} does not split over {args.nproc} processes")
    flags = [f"--{key}={value}" for key, value in (item.split("=", 1) for item in args.override)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "lmforge.cli.main", "train", "--config", str(CONFIG), *flags, f"--out_dir={args.out_dir}",
               "--sample_tokens=0", f"--batch_size={cfg.batch_size // args.nproc}"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return Path(args.out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="runs/bench-shakespeare-char-cpu")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--calibrate", action="store_true", help="also time the nanoGPT-style reference step")
    parser.add_argument("--out", default="bench/results/shakespeare_char_cpu.json")
    parser.add_argument("--nproc", type=int, default=1,
                        help="train under torchrun with N processes of one thread each (DDP over gloo), each "
                             "taking batch_size / N rows of the recipe's batch")
    args = parser.parse_args()
    if not os.environ.get("LMFORGE_DATA"):
        sys.exit("set LMFORGE_DATA to the folder of public data sets (it holds tinyshakespeare/input.txt)")
    cfg = TrainConfig.load(CONFIG, args.override + [f"out_dir={args.out_dir}", "sample_tokens=0"])
    shutil.rmtree(args.out_dir, ignore_errors=True)
    start = time.perf_counter()
    run_dir = train_with_torchrun(args, cfg) if args.nproc > 1 else train(cfg, quiet=False).run_dir
    wall = time.perf_counter() - start
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    data = TokenData.open(run_dir / "data")
    final = lmforge.load(run_dir / "last").model
    out = {
        "benchmark": "shakespeare-char-cpu recipe: validation loss at max_iters and wall time",
        "config": str(CONFIG.relative_to(CONFIG.parent.parent)), "overrides": args.override,
        "processes": args.nproc,
        "iters": metrics[-1]["iter"],
        "val_loss": round(metrics[-1]["val_loss"], 4),
        "train_loss": round(metrics[-1]["train_loss"], 4),
        "best_val_loss": round(min(m["val_loss"] for m in metrics), 4),
        "val_loss_full_split": round(full_split_loss(final, data.val, cfg.model.block_size), 4),
        "wall_s": round(wall, 1),
        "train_loop_tokens_per_sec": round(metrics[-1]["tokens"] / metrics[-1]["elapsed_s"], 1),
        "target": {"val_loss_at_most": 1.86, "wall_s_below": NANOGPT_SECONDS},
        "nanogpt_reference": {"val_loss": NANOGPT_VAL_LOSS, "wall_s": NANOGPT_SECONDS,
                              "tokens_per_sec": NANOGPT_TOKENS_PER_SEC},
        "curve": [{k: round(m[k], 4) for k in ("iter", "train_loss", "val_loss")} for m in metrics],
        "machine": cpu_name(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads() if args.nproc == 1 else f"1 per process, {args.nproc} processes",
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average_at_end": os.getloadavg(),
        "command": "LMFORGE_DATA=... python " + " ".join(sys.argv),
    }
    if args.calibrate:
        out["calibration"] = calibrate(cfg, data)
        speedup = out["calibration"]["speedup_vs_nanogpt_step"]
        scaled = wall * out["calibration"]["tokens_per_sec_median"]["nanogpt_reference"] / NANOGPT_TOKENS_PER_SEC
        out["calibration"]["wall_s_at_reference_machine_speed"] = round(scaled, 1)
        out["calibration"]["note"] = (
            "wall_s was measured on a shared machine whose nanoGPT-style step ran at the tokens/s above; scaled to "
            f"the {NANOGPT_TOKENS_PER_SEC} tokens/s of the issue's measurement this run takes about {scaled:.0f} s; "
            f"the single-process step speedup alone suggests {NANOGPT_SECONDS / speedup:.0f} s")
    print(json.dumps({k: out[k] for k in ("val_loss", "val_loss_full_split", "wall_s")} |
                     ({"calibration": out["calibration"]["tokens_per_sec_median"],
                       "speedup": out["calibration"]["speedup_vs_nanogpt_step"]} if args.calibrate else {}), indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
