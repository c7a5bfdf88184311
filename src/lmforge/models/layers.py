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


PACK_MIN_ROWS = 4  # below this, MKL's matrix-vector path on nn.Linear's own layout is as fast


def _mkl_linear_available() -> bool:
    try:
        return torch.backends.mkl.is_available() and torch.ops.mkl._mkl_linear is not None
    except (AttributeError, RuntimeError):
        return False


class Linear(nn.Linear):
    """nn.Linear that can run on a copy of its weight packed by MKL for one row count.

    A decoding step multiplies every weight by a few rows (one token for each sequence or beam).
    On the CPU, MKL's general kernels stream nn.Linear's (out, in) layout at only 5-10 GB/s for 4 to
    32 rows; a copy packed for that row count runs 1.5-2x faster (bench/README.md, Generation).
    :func:`pack_linears` makes the copies, :func:`unpack_linears` drops them. A copy is used only
    without autograd, for its row count, and while the weight is unchanged since packing.
    """

    pack: tuple[int, int, torch.Tensor] | None = None  # (rows, weight version, packed weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pack = self.pack
        if pack is not None and not torch.is_grad_enabled():
            rows, version, packed = pack
            # a compiled decoding step skips the version check: its session packs before every step
            compiling = torch.compiler.is_compiling()
            if x.numel() == rows * self.in_features and (compiling or self.weight._version == version):
                product = packed_linear if compiling else torch.ops.mkl._mkl_linear
                y = product(x.reshape(rows, self.in_features), packed, self.weight, self.bias, rows)
                return y.view(*x.shape[:-1], self.out_features)
        if x.numel() == self.in_features and self.weight.numel() <= FUSED_MV_MAX_WEIGHT \
                and x.device.type == "cpu" and torch.compiler.is_compiling():  # one row, a small weight: see below
            v = x.reshape(-1)
            y = torch.mv(self.weight, v) if self.bias is None else torch.addmv(self.bias, self.weight, v)
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


# On the CPU, inductor turns a matrix-vector product (`mv`) into its own C++ loop, fused with the operations around it
# (a whole decoding step of the 6 x 384 benchmark model becomes one kernel), where `addmm` calls MKL and,
# at one row, first clones its input and copies the bias. Up to this many weights per matrix that is
# 4-10 % faster per step; above it (GPT-2's 768 x 2304 and larger) MKL's product is faster.
FUSED_MV_MAX_WEIGHT = 1 << 20

_LIBRARY = torch.library.Library("lmforge", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor packed, Tensor weight, Tensor? bias, int rows) -> Tensor")
# MKL's product itself is the kernel: an opaque operator, so that a compiled graph calls it as is (inductor
# lowers mkl::_mkl_linear only for weights frozen into the graph). Registered with torch.library's plain
# API rather than torch.library.custom_op, whose Python wrapper costs ~10 us a call (25 calls a step).
if _mkl_linear_available():  # else pack_linears never packs, and the operator is never called
    _LIBRARY.impl("packed_linear", torch.ops.mkl._mkl_linear.default, "CompositeExplicitAutograd")
packed_linear = torch.ops.lmforge.packed_linear


@torch.library.register_fake("lmforge::packed_linear")
def _(x, packed, weight, bias, rows):
    return x.new_empty(rows, weight.shape[0])


def pack_linears(model: nn.Module, rows: int) -> None:
    """Pack the weights of `model`'s :class:`Linear` layers for products with `rows` rows, where that
    pays: float32 weights on a CPU with MKL and at least PACK_MIN_ROWS rows (else drop any packs)."""
    eligible = rows >= PACK_MIN_ROWS and _mkl_linear_available()
    for module in model.modules():
        if not isinstance(module, Linear):
            continue
        w = module.weight
        if not eligible or w.device.type != "cpu" or w.dtype != torch.float32:
            module.pack = None
        elif module.pack is None or module.pack[:2] != (rows, w._version):
            with torch.no_grad():
                module.pack = (rows, w._version, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows))


def unpack_linears(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Linear):
            module.pack = None


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
        self.fc = Linear(dim, hidden * (2 if gated else 1), bias=bias)
        self.proj = Linear(hidden, dim, bias=bias)
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
    if q.shape[2] == 1 and dropout == 0.0 and not is_causal and q.device.type == "cpu":
        return single_query_attention(q, k, v, mask, scale)
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          scale=scale)


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           scale: float | None) -> torch.Tensor:
    """Attention of one query position (a decoding step) as two batched matrix products.

    On the CPU this beats SDPA's kernels, whose set-up costs dominate at one query, and the query
    heads of a group read their shared key/value head in place (no repeat_interleave copy).
    """
    B, H, _, D = q.shape
    kv_heads, L = k.shape[1], k.shape[2]
    group = H // kv_heads
    q = q.reshape(B * kv_heads, group, D) * (D ** -0.5 if scale is None else scale)
    scores = torch.bmm(q, k.reshape(B * kv_heads, L, D).transpose(1, 2)).view(B, kv_heads, group, L)
    if mask is not None:
        if mask.dim() == 4 and mask.shape[1] != 1:  # per head (T5's position bias): grouped like the heads
            mask = mask.reshape(mask.shape[0], kv_heads, group, L)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1) if scores.dtype == torch.float32 \
        else torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.bmm(probs.view(B * kv_heads, group, L), v.reshape(B * kv_heads, L, D)).view(B, H, 1, D)


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
