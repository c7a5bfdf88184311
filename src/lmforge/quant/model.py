"""Quantize a model's linear layers in place (through the wrap seam), and describe what is quantized.

    quantize_model(model, "int8")                      # every linear layer but the output head
    quantize_model(model, "int4", group_size=32, head=True)
    quantization_config(model)                          # what config.json records

Embeddings and norms stay float. The output head stays float unless `head`: where it is tied to the token
embedding, quantizing it unties it (the embedding keeps its float weight, the head gets its own integers).
"""

from __future__ import annotations

from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.wrap import linear_layers, wrap_linears
from lmforge.quant.layers import QuantLinear, check_group_size

METHODS = {"int8": 8, "int4": 4}
DEFAULT_GROUP_SIZE = 32  # bench/README.md, Quantization: as fast as 128 here, and closer to the float model
QUANT_METHOD = "lmforge"  # config.json's quantization_config.quant_method


def bits_of(method: str) -> int:
    if method not in METHODS:
        raise LmforgeError(f"unsupported quantization {method!r}; choose int8 or int4")
    return METHODS[method]


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def is_quantized(model: nn.Module) -> bool:
    return bool(quantized_layers(model))


def quantize_model(model: nn.Module, method: str, group_size: int | None = None, head: bool = False) -> list[str]:
    """Replace the model's float linear layers (not the output head unless `head`) with QuantLinear layers of
    `method` ("int8" or "int4", groups of `group_size` inputs, default 32); returns their names. Every layer is
    checked before any is changed."""
    bits = bits_of(method)
    if is_quantized(model):
        raise LmforgeError("the model is already quantized; quantize its float original instead")
    if bits == 8 and group_size is not None:
        raise LmforgeError("int8 weights have one scale per output channel; a group size applies to int4 only")
    group_size = (group_size or DEFAULT_GROUP_SIZE) if bits == 4 else None
    chosen = {name: layer for name, layer in linear_layers(model)
              if type(layer) is nn.Linear and (head or name != "lm_head")}
    wrapped = [name for name, layer in linear_layers(model) if name not in chosen and (head or name != "lm_head")]
    if wrapped:
        raise LmforgeError(f"layer {wrapped[0]} is wrapped (an adapter?); quantize the model before adding adapters")
    if bits == 4:
        for name, layer in chosen.items():
            check_group_size(name, layer.in_features, group_size)
    if "lm_head" in chosen and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return wrap_linears(model, lambda name, layer: name in chosen,
                        lambda name, layer: QuantLinear.from_linear(layer, bits, group_size))


def quantization_config(model: nn.Module) -> dict:
    """config.json's `quantization_config` of a quantized model (its layers by lmforge name)."""
    layers = quantized_layers(model)
    if not layers:
        raise LmforgeError("the model is not quantized")
    first = next(iter(layers.values()))
    return {"quant_method": QUANT_METHOD, "bits": first.bits, "group_size": first.group_size,
            "scheme": "symmetric, weight-only, " + ("per output channel" if first.bits == 8 else "per group of inputs"),
            "modules": list(layers)}


def prepare_training_base(model: nn.Module, method: str | None, adapting: bool, source: str) -> None:
    """A training run's base model: quantized at load if `method`; integer weights do not train, so a quantized
    base trains only through an adapter (which LoRA wraps around its QuantLinear layers)."""
    if method is not None:
        quantize_model(model, method)
    if is_quantized(model) and not adapting:
        raise LmforgeError(f"{source} holds quantized (integer) weights, which do not train; train an adapter over "
                           "them (adapter.method lora), or fine-tune the float model")
