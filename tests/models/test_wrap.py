"""The wrap seam (models/wrap.py): choose linear layers by name, wrap them in place and back, or in a view that
leaves the model as it was and shares its parameters."""

import re

import pytest
import torch
from torch import nn

from lmforge.config import ModelConfig, encdec_preset
from lmforge.errors import LmforgeError
from lmforge.models.decoder import DecoderLM
from lmforge.models.encdec import EncoderDecoderLM
from lmforge.models.wrap import linear_layers, select_linears, unwrap_linears, wrap_linears, wrapped_view
from model_snapshot import model_snapshot


class Scaled(nn.Module):
    """A wrapper as LoRA or int8 weights would be: `base` is the layer it replaced."""

    def __init__(self, base: nn.Module, factor: float = 2.0):
        super().__init__()
        self.base = base
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, x):
        return self.base(x) * self.factor


class Adapter(nn.Module):
    """A LoRA-like wrapper: the base layer plus a low-rank path of its own linear layers."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, 2, bias=False)
        self.up = nn.Linear(2, base.out_features, bias=False)
        nn.init.normal_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


def tiny_llama() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.for_family("llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16,
                                            vocab_size=50)).eval()


IDS = torch.tensor([[3, 4, 5, 6]])


def logits(model):
    with torch.no_grad():
        return model(IDS)


def test_targets_choose_layers_as_peft_does():
    model = tiny_llama()
    names = [name for name, _ in linear_layers(model)]
    assert names == [f"blocks.{i}.{n}" for i in (0, 1) for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")] \
        + ["lm_head"]
    assert select_linears(model, ["attn.qkv", "mlp.fc"]) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc",
                                                             "blocks.1.attn.qkv", "blocks.1.mlp.fc"]
    assert select_linears(model, ["proj"]) == ["blocks.0.attn.proj", "blocks.0.mlp.proj", "blocks.1.attn.proj",
                                               "blocks.1.mlp.proj"]
    assert select_linears(model, "all-linear") == names[:-1]  # every layer but the output head
    assert select_linears(model, r"blocks\.1\..*") == names[4:8]
    assert select_linears(model, re.compile(r".*\.mlp\.proj")) == ["blocks.0.mlp.proj", "blocks.1.mlp.proj"]
    assert select_linears(model, lambda name, layer: layer.out_features == 50) == ["lm_head"]


@pytest.mark.parametrize("targets", [["attn.q"], ["qkv", "mlp.gate"], r"blocks\.9\..*"])
def test_an_unknown_target_names_the_valid_layers(targets):
    with pytest.raises(LmforgeError) as error:
        select_linears(tiny_llama(), targets)
    message = str(error.value)
    assert "names no linear layer" in message
    for name in ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc", "blocks.*.mlp.proj", "lm_head"):
        assert name in message


def test_wrap_and_unwrap_restore_the_original_modules():
    model = tiny_llama()
    before_modules = dict(model.named_modules())
    before_keys = list(model.state_dict())
    reference = logits(model)
    names = wrap_linears(model, ["attn.qkv", "lm_head"], lambda name, layer: Scaled(layer))
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "lm_head"]
    assert isinstance(model.lm_head, Scaled) and model.lm_head.base is before_modules["lm_head"]
    assert "lm_head.base.weight" in model.state_dict() and "lm_head.factor" in model.state_dict()
    assert not torch.equal(logits(model), reference)
    assert unwrap_linears(model) == names
    assert dict(model.named_modules()) == before_modules  # the same objects under the same names
    assert list(model.state_dict()) == before_keys
    torch.testing.assert_close(logits(model), reference, rtol=0, atol=0)


def test_a_wrapper_may_wrap_a_wrapper_and_unwrap_peels_one_level():
    model = tiny_llama()
    fc = model.blocks[0].mlp.fc
    wrap_linears(model, ["mlp.fc"], lambda name, layer: Scaled(layer, 2.0))
    assert select_linears(model, ["mlp.fc"]) == ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]  # wrappers stand in
    wrap_linears(model, ["blocks.0.mlp.fc"], lambda name, layer: Scaled(layer, 3.0))
    assert model.blocks[0].mlp.fc.base.base is fc
    assert unwrap_linears(model, ["blocks.0.mlp.fc"]) == ["blocks.0.mlp.fc"]
    assert model.blocks[0].mlp.fc.base is fc and model.blocks[0].mlp.fc.factor.item() == 2.0
    assert unwrap_linears(model) == ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]
    assert model.blocks[0].mlp.fc is fc and unwrap_linears(model) == []


@pytest.mark.parametrize("build", [tiny_llama, lambda: EncoderDecoderLM(encdec_preset("tiny-t5", vocab_size=50)).eval()],
                         ids=["llama", "t5"])
def test_a_view_shares_parameters_and_leaves_the_model_untouched(build):
    model = build()
    before = model_snapshot(model)
    view = wrapped_view(model, "all-linear", lambda name, layer: Scaled(layer, 1.0))
    assert model_snapshot(model) == before
    assert not any(isinstance(m, Scaled) for m in model.modules())
    ours = dict(model.named_modules())
    assert all(m is not ours.get(name) for name, m in view.named_modules())  # every module is the view's own
    params = dict(model.named_parameters())
    for name, p in view.named_parameters():
        if not name.endswith("factor"):
            assert p is params[name.replace(".base.", ".")]  # the same tensors, so the same storage
    assert isinstance(view.lm_head, nn.Linear)  # not chosen by all-linear


def test_a_view_wraps_inside_in_place_wrappers():
    model = tiny_llama()
    reference = logits(model)
    wrap_linears(model, ["mlp.proj"], lambda name, layer: Adapter(layer))
    assert [name for name, _ in linear_layers(model)][3] == "blocks.0.mlp.proj"  # an adapter's own layers are not listed
    adapter = model.blocks[0].mlp.proj
    before = model_snapshot(model)
    chosen = []
    view = wrapped_view(model, lambda name, linear: chosen.append(type(linear)) or True,
                        lambda name, linear: Scaled(linear, 1.0))
    assert set(chosen) == {nn.Linear}  # the predicate sees the innermost layer
    assert model_snapshot(model) == before
    outer = view.blocks[0].mlp.proj
    assert isinstance(outer, Adapter) and outer is not adapter
    assert outer.down is not adapter.down and outer.down.weight is adapter.down.weight
    assert isinstance(outer.base, Scaled) and outer.base.base is adapter.base
    wrapped = logits(model)
    assert not torch.equal(wrapped, reference)
    torch.testing.assert_close(logits(view), wrapped, rtol=0, atol=0)  # the adapter runs in the view too
    unwrap_linears(model)
    torch.testing.assert_close(logits(model), reference, rtol=0, atol=0)
