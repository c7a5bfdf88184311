"""The training-speed autograd functions in models/layers.py against their plain references."""

import torch
import torch.nn.functional as F

from lmforge.models.layers import (
    MLP,
    RMSNorm,
    RotaryEmbedding,
    _RMSNormFunction,
    apply_rotary,
)


def test_rmsnorm_backward_passes_gradcheck_and_matches_the_composite_formula():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFunction.apply(a, b, 1e-6), (x, w))

    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
    x32 = torch.randn(3, 5, 16, requires_grad=True)
    ref_x = x32.detach().clone().requires_grad_()
    ref_w = norm.weight.detach().clone().requires_grad_()
    ref = ref_w * (ref_x * torch.rsqrt(ref_x.pow(2).mean(-1, keepdim=True) + norm.eps))
    out = norm(x32)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x32.grad, ref_x.grad)
    torch.testing.assert_close(norm.weight.grad, ref_w.grad)


def test_rotary_matches_rotate_half_formula():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, 10000.0)
    positions = torch.tensor([[0, 1, 2, 5]])
    cos, signed_sin = rope(positions, torch.float32)
    x = torch.randn(1, 3, 4, 8)
    freqs = positions[..., None].float() * rope.inv_freq
    emb = torch.cat((freqs, freqs), -1)[:, None]
    rotated = torch.cat((-x[..., 4:], x[..., :4]), -1)
    torch.testing.assert_close(apply_rotary(x, cos, signed_sin), x * emb.cos() + rotated * emb.sin())


def test_rotary_backward_passes_gradcheck_on_a_strided_view():
    cos, signed_sin = RotaryEmbedding(8, 10000.0)(torch.arange(5)[None], torch.float64)
    qkv = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)  # heads as the model views them
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t.transpose(1, 2), cos, signed_sin), (qkv,))


def test_swiglu_backward_matches_autograd_of_the_formula():
    torch.manual_seed(0)
    mlp = MLP(6, 4, "silu", gated=True, bias=False).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))
    gate, up = mlp.fc(x).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), mlp.proj(F.silu(gate) * up))
