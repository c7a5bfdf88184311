"""Building blocks shared by the decoder-only and encoder-decoder models."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction (Llama, T5), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    return nn.LayerNorm(dim, eps=eps, bias=bias)


ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Feed-forward block; with `gated` the first projection holds [gate; up] (SwiGLU / gated-GELU)."""

    def __init__(self, dim: int, hidden: int, activation: str, gated: bool, bias: bool):
        super().__init__()
        self.fc = nn.Linear(dim, hidden * (2 if gated else 1), bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.proj(h)


class RotaryEmbedding(nn.Module):
    """RoPE in the Hugging Face layout: the two halves of each head dimension form the rotated pairs."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device="cpu").float() / self.head_dim
        return 1.0 / (self.theta ** exponents)

    def reset_buffers(self) -> None:
        """Recompute the frequencies (after the model was built on the meta device)."""
        self.inv_freq = self._inv_freq()

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, head_dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              is_causal: bool, dropout: float, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention over (B, heads, T, head_dim); kv heads are shared across groups."""
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          scale=scale)


def causal_padding_mask(attention_mask: torch.Tensor | None, past: int, new: int,
                        device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """The boolean attention mask (B, 1, new, past + new) for SDPA, or (None, is_causal) when none is needed.

    Query i (absolute position past + i) sees keys at positions <= its own that are not padding. A
    padding query would see nothing, which makes SDPA return NaN; it is allowed to see itself instead
    (its output is never used).
    """
    total = past + new
    if attention_mask is None or bool(attention_mask.all()):
        if new == 1 or past == 0:
            return None, new > 1
        attention_mask = None
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :total].bool()
        mask = mask | (k_pos == q_pos)[None, None]
    return mask, False


def init_gpt2_style(module: nn.Module, std: float = 0.02) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


def scaled_residual_std(std: float, n_layer: int) -> float:
    """GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer)."""
    return std / math.sqrt(2 * n_layer)
