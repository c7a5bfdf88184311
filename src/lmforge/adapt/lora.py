"""LoRA: low-rank updates of chosen linear layers, applied in place through the wrap seam (models/wrap.py).

A targeted Hugging Face module gets W x + scale * B A dropout(x), with A (r, in) drawn as PEFT does
(Kaiming-uniform, or Gaussian with std 1/r) and B (out, r) zero, so a new adapter starts as the identity;
scale = alpha / r, or alpha / sqrt(r) with rsLoRA. Where lmforge fuses several Hugging Face modules into one
layer (q/k/v, gate/up, k/v), each targeted module is a slice of the layer's output rows with its own A and B,
and the untargeted slices stay as they are: the same function as PEFT's LoRA on the separate modules
(LitGPT's LoRAQKVLinear does the same for q/k/v).

    wrapper = LoRALinear(layer)        # what wrap_linears puts in place of `layer`
    wrapper.adapters["default"] = LoRA(in_features, [LoRAModule("...q_proj", 0, 64, r=8, scale=2.0), ...])
    wrapper.active = "default"         # None: the base layer alone
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.wrap import innermost


@dataclass(frozen=True)
class LoRAModule:
    """One Hugging Face module of a layer: its name, its output rows [start, stop) there, rank and scale."""

    name: str
    start: int
    stop: int
    r: int
    scale: float


class LoRA(nn.Module):
    """One adapter's updates of one linear layer: an (A, B) pair per targeted module."""

    def __init__(self, in_features: int, modules: list[LoRAModule], dropout: float, *, device=None, dtype=None):
        super().__init__()
        self.modules_ = modules
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(m.r, in_features, device=device, dtype=dtype))
                                       for m in modules)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(m.stop - m.start, m.r, device=device, dtype=dtype))
                                       for m in modules)
        self.lora_dropout = nn.Dropout(dropout) if dropout else None

    def reset_parameters(self, init: bool | str = True) -> None:
        """PEFT's initialisation: A Kaiming-uniform (`True`) or N(0, 1/r) (`"gaussian"`), B zero."""
        with torch.no_grad():
            for module, a, b in zip(self.modules_, self.lora_A, self.lora_B):
                if init == "gaussian":
                    nn.init.normal_(a, std=1 / module.r)
                else:
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                b.zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`y` (the base layer's output for `x`) plus the updates, added in place into its slices."""
        flat = y.view(-1, y.shape[-1])
        if self.lora_dropout is None and len(self.modules_) > 1:  # one product with every A at once
            zs = F.linear(x, torch.cat(list(self.lora_A))).split([m.r for m in self.modules_], dim=-1)
        else:
            zs = [F.linear(x if self.lora_dropout is None else self.lora_dropout(x), a) for a in self.lora_A]
        for module, z, b in zip(self.modules_, zs, self.lora_B):
            update = F.linear(z, b).reshape(-1, b.shape[0])
            if module.start == 0 and module.stop == flat.shape[1]:
                flat.add_(update, alpha=module.scale)
            else:
                flat[:, module.start:module.stop].add_(update, alpha=module.scale)
        return y

    def delta(self, index: int) -> torch.Tensor:
        """scale * B A of module `index`: the change of the layer's rows [start, stop)."""
        return (self.lora_B[index] @ self.lora_A[index]) * self.modules_[index].scale


class LoRALinear(nn.Module):
    """A linear layer (`base`) with LoRA adapters by name; `active` is the one that runs (None: the base alone)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: str | None = None

    @property
    def in_features(self) -> int:
        return innermost(self.base).in_features

    @property
    def out_features(self) -> int:
        return innermost(self.base).out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.active is None:
            return y
        return self.adapters[self.active](x, y)

    def merge(self, name: str) -> None:
        """Add adapter `name`'s updates to the base weight, in place (the adapter stays; remove it after)."""
        weight = innermost(self.base).weight
        lora = self.adapters[name]
        with torch.no_grad():
            for i, module in enumerate(lora.modules_):
                weight[module.start:module.stop] += lora.delta(i).to(weight.dtype)
