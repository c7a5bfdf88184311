"""QuantLinear against its formulas: the stored integers and scales, and products equal to float products with
the dequantized weight (within the kernels' bfloat16 activation rounding)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.quant.layers import KERNEL_DTYPE, QuantLinear, dequantize, quantize_int4, quantize_int8, unpack_int4


def test_int8_is_symmetric_per_output_channel_and_rounds_to_nearest():
    w = torch.randn(24, 40)
    w[3] = 0  # an all-zero row stays zero (scale 1, not 0)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (24,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    nonzero = torch.arange(24) != 3
    torch.testing.assert_close(scale[nonzero], w[nonzero].abs().amax(dim=1) / 127)
    assert torch.equal(q[3], torch.zeros(40, dtype=torch.int8))
    error = (dequantize(8, q, scale, None) - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())  # round to nearest: at most half a step


@pytest.mark.parametrize("group", [32, 64])
def test_int4_groups_pack_two_codes_a_byte(group):
    w = torch.randn(20, 128)
    packed, scale = quantize_int4(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (20, 64) and scale.shape == (20, 128 // group)
    codes = unpack_int4(packed)
    assert int(codes.max()) <= 15
    assert torch.equal(codes[:, 0] | (codes[:, 1] << 4), packed[:, 0])  # the even input in the low nibble
    groups = w.view(20, -1, group)
    torch.testing.assert_close(scale, groups.abs().amax(dim=2) / 7)
    error = (dequantize(4, packed, scale, group) - w).abs().view(20, -1, group)
    assert bool((error <= scale[..., None] / 2 + 1e-6).all())


def _bf16_tolerance(x: torch.Tensor, w: torch.Tensor) -> float:
    """What rounding the activations (and scales) to bfloat16 can change in x @ w.T: 2 * 2**-8 relative each."""
    return float((x.abs() @ w.abs().t()).max()) * 2 * 2 ** -8 + 1e-5


@pytest.mark.parametrize("bits,out", [(8, 37), (4, 37), (4, 48)])
@pytest.mark.parametrize("rows", [1, 3])
def test_products_equal_float_products_with_the_dequantized_weight(bits, out, rows):
    torch.manual_seed(0)
    linear = nn.Linear(64, out)
    layer = QuantLinear.from_linear(linear, bits, 32 if bits == 4 else None)
    x = torch.randn(2, rows, 64)
    w = layer.dequantized()
    with torch.no_grad():
        expected = F.linear(x, w, linear.bias)
        got = layer(x)
    assert got.shape == (2, rows, out) and got.dtype == torch.float32
    tol = _bf16_tolerance(x.view(-1, 64), w) if KERNEL_DTYPE == torch.bfloat16 else 1e-5
    assert float((got - expected).abs().max()) <= tol
    # no float copy of the weight is kept: only integers, and scales with a value per row or per group
    assert not any(t.is_floating_point() and t.numel() >= 64 * out // 2 for t in [*layer.buffers(), *layer.parameters()])


def test_gradient_of_the_input_is_that_of_the_dequantized_weight():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(32, 16), 8)
    x = torch.randn(3, 32, requires_grad=True)
    layer(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    F.linear(x2, layer.dequantized(), layer.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0.02, atol=0.02)
    assert not any(p.requires_grad for p in layer.parameters())


def test_state_round_trip_repacks_the_kernel_layout():
    torch.manual_seed(0)
    a = QuantLinear.from_linear(nn.Linear(64, 24), 4, 32)
    b = QuantLinear(64, 24, True, 4, 32)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"qweight", "scales", "bias"}
    x = torch.randn(1, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
