"""Weight-only quantized linear layers: the weight stored as integers with float scales, activations float.

- **int8**: symmetric, one scale per output channel: w[o, i] ~= q[o, i] * scale[o], q in [-127, 127].
- **int4**: symmetric groups of `group_size` inputs, one scale per (output, group): w ~= (code - 8) * scale,
  code in [0, 15]; stored two codes to a byte along the input (the even input in the low nibble).

A `QuantLinear` replaces an `nn.Linear` through the wrap seam (models/wrap.py) and is itself a linear layer to
it (an nn.Linear subclass), so LoRA wraps it like any other. Its products run PyTorch's own weight-only
kernels on the integers (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) and never build a float copy
of the weight; they are registered as opaque operators (`lmforge_quant::*`), so that a compiled decoding step
calls the very kernel the eager one does (the same tokens) and inductor does not re-lower them. Which
activation dtype they run in was decided by bench/bench_quant_kernels.py (bench/README.md, Quantization).
Backward (LoRA over a frozen quantized base) dequantizes one layer's weight for the gradient of its input:
training is not decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import LmforgeError

GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
INT4_ROW_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu packs output rows in tiles of 16

# The activation dtype of the CPU kernels (bench/README.md, Quantization): _weight_int8pack_mm and
# _weight_int4pack_mm_for_cpu have vectorised bfloat16 paths only; with float32 activations both were
# several times slower than float32 F.linear at 1-8 rows.
KERNEL_DTYPE = torch.bfloat16


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (out, in), scale float32 (out,)): symmetric per output channel."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 (out, in/2), two to a byte; scale float32 (out, in/group_size)): symmetric groups."""
    out, inp = weight.shape
    g = weight.detach().float().view(out, inp // group_size, group_size)
    scale = g.abs().amax(dim=2) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (torch.round(g / scale[..., None]).clamp_(-8, 7) + 8).to(torch.uint8).view(out, inp)
    return codes[:, 0::2] | (codes[:, 1::2] << 4), scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (out, in) from two to a byte (out, in/2)."""
    return torch.stack([packed & 15, packed >> 4], dim=2).view(packed.shape[0], -1)


def dequantize(bits: int, qweight: torch.Tensor, scales: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """The float32 weight (out, in) the integers stand for (export, tests, gradients; never a decoding step)."""
    if bits == 8:
        return qweight.float() * scales[:, None]
    codes = unpack_int4(qweight).float() - 8
    out, inp = codes.shape
    return (codes.view(out, inp // group_size, group_size) * scales[..., None]).view(out, inp)


def check_group_size(name: str, in_features: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise LmforgeError(f"int4 group size {group_size} is not supported; choose one of "
                           f"{', '.join(map(str, GROUP_SIZES))}")
    if in_features % group_size:
        raise LmforgeError(f"int4 group size {group_size} does not divide the {in_features} inputs of layer {name}; "
                           "choose a group size that does")


# ---- the kernels, as opaque operators ---------------------------------------------------------------------

_LIBRARY = torch.library.Library("lmforge_quant", "DEF")
_LIBRARY.define("int8_linear(Tensor x, Tensor qweight, Tensor scales) -> Tensor")
_LIBRARY.define("int4_linear(Tensor x, Tensor packed, Tensor scales_zeros, int group_size, int out_features) -> Tensor")


def _int8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (rows, in) times the int8 weight: `scales` in the kernel's activation dtype."""
    if x.device.type != "cpu":
        return (x @ qweight.to(x.dtype).t()) * scales.to(x.dtype)
    return torch.ops.aten._weight_int8pack_mm(x.to(scales.dtype), qweight, scales).to(x.dtype)


def _int4_linear(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group_size: int,
                 out_features: int) -> torch.Tensor:
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(scales_zeros.dtype), packed, group_size, scales_zeros)
    return y[:, :out_features].to(x.dtype)


_LIBRARY.impl("int8_linear", _int8_linear, "CompositeExplicitAutograd")
_LIBRARY.impl("int4_linear", _int4_linear, "CompositeExplicitAutograd")


@torch.library.register_fake("lmforge_quant::int8_linear")
def _(x, qweight, scales):
    return x.new_empty(x.shape[0], qweight.shape[0])


@torch.library.register_fake("lmforge_quant::int4_linear")
def _(x, packed, scales_zeros, group_size, out_features):
    return x.new_empty(x.shape[0], out_features)


class _QuantProduct(torch.autograd.Function):
    """The quantized product with a gradient for its input (LoRA trains layers below a frozen quantized one)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer.product(x)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.dequantized().to(grad.dtype), None


class QuantLinear(nn.Linear):
    """A linear layer whose weight is integers (`qweight`) and float scales (`scales`), as stored in a quantized
    folder; the bias stays float. Built with `from_linear` (quantizing), or empty to load a state into. The
    kernels' own layout of the weight (non-persistent buffers) is built by `pack`, again after every
    load_state_dict; int4 keeps both layouts (0.5 byte a weight each; a product reads one)."""

    quantized = True

    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, group_size: int | None,
                 device=None, dtype=torch.float32):
        nn.Module.__init__(self)  # nn.Linear's own would allocate a float weight
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, (group_size if bits == 4 else None)
        self.compute_dtype = dtype
        stored = (out_features, in_features) if bits == 8 else (out_features, in_features // 2)
        scales = (out_features,) if bits == 8 else (out_features, in_features // group_size)
        self.register_buffer("qweight", torch.zeros(stored, dtype=torch.int8 if bits == 8 else torch.uint8,
                                                    device=device))
        self.register_buffer("scales", torch.ones(scales, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) \
            if bias else None
        self.register_buffer("kernel_weight", None, persistent=False)
        self.register_buffer("kernel_scales", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.pack())
        self.pack()

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> QuantLinear:
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size,
                    device=weight.device, dtype=weight.dtype)
        q, scale = quantize_int8(weight) if bits == 8 else quantize_int4(weight, group_size)
        with torch.no_grad():
            layer.qweight.copy_(q)
            layer.scales.copy_(scale)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.pack()
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """No float weight exists: code that asks a linear layer for its weight's device or dtype (LoRA, a
        decoding session) gets an empty tensor with the layer's device and compute dtype."""
        return self.scales.new_empty(0, dtype=self.compute_dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}, " \
               f"bias={self.bias is not None}"

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.bits, self.qweight, self.scales, self.group_size)

    def pack(self) -> None:
        """The weight in the kernels' layout: int8 as stored, its scales in the kernel's dtype; int4 repacked by
        `_convert_weight_to_int4pack_for_cpu`, its output rows padded to a multiple of 16, with (scale, zero 0)
        pairs (in/group, out, 2)."""
        on_cpu = self.qweight.device.type == "cpu"
        dtype = KERNEL_DTYPE if on_cpu else self.compute_dtype
        with torch.no_grad():
            if self.bits == 8:
                self.kernel_weight, self.kernel_scales = self.qweight, self.scales.to(dtype)
            elif on_cpu:
                codes, scales = unpack_int4(self.qweight).to(torch.int32), self.scales
                pad = -self.out_features % INT4_ROW_MULTIPLE
                if pad:
                    codes = torch.cat([codes, codes.new_full((pad, codes.shape[1]), 8)])
                    scales = torch.cat([scales, scales.new_zeros(pad, scales.shape[1])])
                self.kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
                self.kernel_scales = torch.stack([scales, torch.zeros_like(scales)], dim=2).transpose(0, 1) \
                    .contiguous().to(dtype)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) times the weight (no bias)."""
        flat = x.reshape(-1, self.in_features)
        if self.bits == 8:
            y = torch.ops.lmforge_quant.int8_linear(flat, self.kernel_weight, self.kernel_scales)
        elif self.kernel_weight is not None and self.kernel_weight.device.type == "cpu":
            y = torch.ops.lmforge_quant.int4_linear(flat, self.kernel_weight, self.kernel_scales, self.group_size,
                                                    self.out_features)
        else:  # int4 kernels of other devices want another layout: dequantize
            y = flat @ self.dequantized().to(flat.dtype).t()
        return y.view(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _QuantProduct.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else self.product(x)
        return y if self.bias is None else y + self.bias
