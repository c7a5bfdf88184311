"""The fast paths in models/layers.py against their plain references."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.models.decoder import DecoderLM
from lmforge.models.layers import (
    MLP,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    _mkl_linear_available,
    _RMSNormFunction,
    apply_rotary,
    attention,
    pack_linears,
    unpack_linears,
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


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_single_query_attention_matches_sdpa(heads, kv_heads, mask_kind):
    torch.manual_seed(0)
    B, L, D = 3, 7, 8
    q = torch.randn(B, heads, 1, D)
    k, v = torch.randn(B, kv_heads, L, D), torch.randn(B, kv_heads, L, D)
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
        mask[0, ..., :3] = False
    elif mask_kind == "float":
        mask = torch.randn(1, heads, 1, L)  # T5's position bias: per head, shared by the batch
    out = attention(q, k, v, mask, False, 0.0)
    groups = heads // kv_heads
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                         attn_mask=mask)
    torch.testing.assert_close(out, ref)


@pytest.mark.skipif(not _mkl_linear_available(), reason="this torch build has no MKL packed GEMM")
def test_packed_linears_give_the_same_logits_and_are_dropped_when_weights_change():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.for_family("gpt2", n_layer=2, n_head=2, n_embd=32, block_size=16,
                                             vocab_size=50)).eval()
    x = torch.randn(4, 1, 32)
    layer = model.blocks[0].mlp.fc
    assert isinstance(layer, Linear)
    with torch.inference_mode():
        plain = layer(x)
        pack_linears(model, 4)
        assert layer.pack is not None and layer.pack[0] == 4
        torch.testing.assert_close(layer(x), plain)
        other_rows = torch.randn(5, 1, 32)
        torch.testing.assert_close(layer(other_rows), F.linear(other_rows, layer.weight, layer.bias))
    with torch.no_grad():
        layer.weight.add_(1.0)  # a training step: the pack is stale and must not be used
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    out = layer(x.requires_grad_())  # autograd never goes through the packed copy
    assert out.requires_grad
    pack_linears(model, 2)  # below the threshold: no packs
    assert layer.pack is None
    pack_linears(model, 4)
    unpack_linears(model)
    assert all(m.pack is None for m in model.modules() if isinstance(m, Linear))
