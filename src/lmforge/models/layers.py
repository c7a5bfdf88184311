"""Building blocks shared by the decoder-only and encoder-decoder models."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward: about half the autograd nodes of the composite version,
    which matters where norms are a large share of a small model's step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        normed = x * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, rstd, weight = ctx.saved_tensors
        g = grad * weight
        dx = (g - normed * (g * normed).mean(-1, keepdim=True)) * rstd
        dw = (grad * normed).sum(dim=tuple(range(grad.dim() - 1))) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction (Llama, T5), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return _RMSNormFunction.apply(x, self.weight, self.eps)
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


class _SiluGateFunction(torch.autograd.Function):
    """silu(gate) * up for h = [gate; up] (SwiGLU), with a backward that writes both halves of the
    gradient into one tensor instead of concatenating two."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        d_gate, d_up = dh.chunk(2, dim=-1)
        torch.mul(grad, act, out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        return dh


class MLP(nn.Module):
    """Feed-forward block; with `gated` the first projection holds [gate; up] (SwiGLU / gated-GELU)."""

    def __init__(self, dim: int, hidden: int, activation: str, gated: bool, bias: bool):
        super().__init__()
        self.fc = nn.Linear(dim, hidden * (2 if gated else 1), bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated and self.activation == "silu":
            h = _SiluGateFunction.apply(h)
        elif self.gated:
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
        """(cos, signed sin), each (B, 1, T, head_dim), for :func:`apply_rotary`; the sine's first half
        is negated, which folds rotate-half's negation into it."""
        freqs = position_ids[..., None].float() * self.inv_freq
        cos = freqs.cos()
        sin = freqs.sin()
        return torch.cat((cos, cos), dim=-1)[:, None].to(dtype), torch.cat((-sin, sin), dim=-1)[:, None].to(dtype)


class _RotaryFunction(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin without materialising rotate_half: each half of the output adds the
    other half of x times its part of the signed sine. The backward is the inverse rotation: the same with
    the sine negated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, signed_sin)
        return _rotate(x, cos, signed_sin, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, signed_sin = ctx.saved_tensors
        return _rotate(grad, cos, signed_sin, -1.0), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, sign: float) -> torch.Tensor:
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], signed_sin[..., :half], value=sign)
    out[..., half:].addcmul_(x[..., :half], signed_sin[..., half:], value=sign)
    return out


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) (the halves swapped, the sign in
    `signed_sin`); cos and sin are constants (no gradient flows to them)."""
    return _RotaryFunction.apply(x, cos, signed_sin)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              is_causal: bool, dropout: float, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention over (B, heads, T, head_dim); kv heads are shared across groups.

    `mask` is boolean (True: attend) or a float bias added to the scores, as for SDPA.
    """
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
