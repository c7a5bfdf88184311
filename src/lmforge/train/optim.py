"""AdamW with decay and no-decay parameter groups, and the learning-rate schedule (warmup, cosine decay)."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices and embeddings decay; biases and norm weights (anything of fewer than 2 dims) do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float],
                   device_type: str, fused: bool = True) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each parameter instead of several) on CPU and GPU, unless
    `fused` is false (parameters sharded by FSDP)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=learning_rate, betas=betas,
                             fused=fused and device_type in ("cpu", "cuda"))


def lr_at(step: int, learning_rate: float, min_lr: float, warmup_iters: int, decay_iters: int,
          decay: bool = True) -> float:
    """Linear warmup to `learning_rate`, then cosine decay to `min_lr` at `decay_iters`, then `min_lr`."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if not decay:
        return learning_rate
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)
