"""Decoding-speed code: what a decoding session runs in place of the plain model's operations.

None of it touches the model. A session builds its own view of the model (`models.wrap.wrapped_view`:
new module objects sharing every parameter) whose linear layers are wrapped here, packs weights into the
wrappers, and passes `decoding_attention` to its cache; closing the session drops all of it.

- **One-query attention** (`decoding_attention`): a decoding step's attention as two batched matrix
  products on the CPU, where SDPA's set-up costs dominate at one query.
- **Weights packed for the decoding batch** (`PackedLinear`): a decoding step multiplies every weight by a
  few rows (one token per sequence or beam). On the CPU, MKL's general kernels stream nn.Linear's (out, in)
  layout at only 5-10 GB/s for 4 to 32 rows; a copy packed by MKL for that row count runs 1.5-2x faster
  (bench/README.md, Generation).
- **Inside a compiled step** (`StepLinear`): the packed product as an opaque operator, and one-row
  products with small weights as `mv`, which inductor fuses with the operations around it. The compiled
  step itself is generate/compiled.py.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.layers import attention
from lmforge.models.wrap import innermost, linear_layers, wrapped_view

PACK_MIN_ROWS = 4  # below this, MKL's matrix-vector path on nn.Linear's own layout is as fast

# On the CPU, inductor turns a matrix-vector product (`mv`) into its own C++ loop, fused with the operations
# around it (a whole decoding step of the 6 x 384 benchmark model becomes one kernel), where `addmm` calls MKL
# and, at one row, first clones its input and copies the bias. Up to this many weights per matrix that is 4-10 %
# faster per step; above it (GPT-2's 768 x 2304 and larger) MKL's product is faster.
FUSED_MV_MAX_WEIGHT = 1 << 20


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


def decoding_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                       is_causal: bool, dropout: float, scale: float | None = None) -> torch.Tensor:
    """`layers.attention`, with one query on the CPU as :func:`single_query_attention`: a session cache's `attend`."""
    if q.shape[2] == 1 and dropout == 0.0 and not is_causal and q.device.type == "cpu":
        return single_query_attention(q, k, v, mask, scale)
    return attention(q, k, v, mask, is_causal, dropout, scale)


def mkl_packing_available() -> bool:
    try:
        return torch.backends.mkl.is_available() and torch.ops.mkl._mkl_linear is not None
    except (AttributeError, RuntimeError):
        return False


_LIBRARY = torch.library.Library("lmforge", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor packed, Tensor weight, Tensor? bias, int rows) -> Tensor")
# MKL's product itself is the kernel: an opaque operator, so that a compiled graph calls it as is. Registered
# with torch.library's plain API rather than torch.library.custom_op, whose Python wrapper costs ~10 us a call
# (25 calls a step).
if mkl_packing_available():  # else nothing is packed, and the operator is never called
    _LIBRARY.impl("packed_linear", torch.ops.mkl._mkl_linear.default, "CompositeExplicitAutograd")
packed_linear = torch.ops.lmforge.packed_linear


@torch.library.register_fake("lmforge::packed_linear")
def _(x, packed, weight, bias, rows):
    return x.new_empty(rows, weight.shape[0])


def _on_cpu(linear: nn.Linear) -> bool:
    # a quantized layer (lmforge.quant) has no float weight to pack: it runs its own integer kernels
    return not getattr(linear, "quantized", False) and linear.weight.device.type == "cpu"


def _packable(linear: nn.Linear) -> bool:
    return _on_cpu(linear) and linear.weight.dtype == torch.float32


class PackedLinear(nn.Module):
    """A session's wrapper of one nn.Linear (`base`): without autograd, products with exactly `rows` rows run
    on a copy of the weight packed by MKL for that row count (see :meth:`pack`), while the weight is unchanged
    since packing; every other product is the base layer's."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.rows = 0
        self.packed: torch.Tensor | None = None
        self.version = -1  # the weight's version when packed

    def pack(self, rows: int) -> None:
        """Pack the weight for `rows` rows where that pays (float32 on a CPU with MKL, at least PACK_MIN_ROWS);
        else drop the packed copy."""
        w = self.base.weight
        if (rows, w._version) == (self.rows, self.version) and self.packed is not None:
            return
        self.rows, self.version, self.packed = rows, w._version, None
        if rows >= PACK_MIN_ROWS and _packable(self.base) and mkl_packing_available():
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        if self.packed is not None and not torch.is_grad_enabled() and x.numel() == self.rows * base.in_features \
                and base.weight._version == self.version:
            y = torch.ops.mkl._mkl_linear(x.reshape(self.rows, base.in_features), self.packed, base.weight, base.bias,
                                          self.rows)
            return y.view(*x.shape[:-1], base.out_features)
        return base(x)


class StepLinear(PackedLinear):
    """PackedLinear inside a compiled decoding step: the packed product through the opaque operator
    `lmforge::packed_linear` (inductor lowers MKL's own only for weights frozen into the graph), with no check
    of the weight's version (the graph cannot read it; the session's weights do not change while it runs);
    one-row products with a small weight as `mv`/`addmv`, which inductor fuses with the operations around it."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.fuse_mv = base.weight.numel() <= FUSED_MV_MAX_WEIGHT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        if self.packed is not None and not torch.is_grad_enabled() and x.numel() == self.rows * base.in_features:
            y = packed_linear(x.reshape(self.rows, base.in_features), self.packed, base.weight, base.bias, self.rows)
            return y.view(*x.shape[:-1], base.out_features)
        if self.fuse_mv and x.numel() == base.in_features:
            v = x.reshape(-1)
            y = torch.mv(base.weight, v) if base.bias is None else torch.addmv(base.bias, base.weight, v)
            return y.view(*x.shape[:-1], base.out_features)
        return base(x)


def decoding_view(model: nn.Module, compiled: bool) -> nn.Module | None:
    """A session's view of `model` in which the linear layers that can run faster are wrapped in a
    PackedLinear (a StepLinear for a compiled session); None where none can."""
    if compiled:
        wrapper, eligible = StepLinear, _on_cpu
    elif mkl_packing_available():
        wrapper, eligible = PackedLinear, _packable
    else:
        return None
    if not any(eligible(innermost(layer)) for _, layer in linear_layers(model)):
        return None
    return wrapped_view(model, lambda name, linear: eligible(linear), lambda name, linear: wrapper(linear))


def pack_view(view: nn.Module, rows: int) -> None:
    """Pack every wrapped weight of a session's view for products with `rows` rows (see PackedLinear.pack)."""
    for module in view.modules():
        if isinstance(module, PackedLinear):
            module.pack(rows)

