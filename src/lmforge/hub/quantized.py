"""A quantized model folder: config.json with a `quantization_config`, model.safetensors, the tokenizer.

Tensors keep the Hugging Face names of the family's float folder, except that the weight `X.weight` of each
quantized module is replaced by two tensors:

- `X.qweight`: int8 (out, in) for int8; uint8 (out, in/2) for int4, two 4-bit codes to a byte, the even input
  in the low nibble, w = (code - 8) * scale;
- `X.scales`: float32, (out,) for int8 (w = q * scale), (out, in/group_size) for int4.

Both are in nn.Linear's (out, in) orientation also for GPT-2's Conv1D modules, and split along the output rows
where lmforge fuses Hugging Face modules (q/k/v, gate/up). Biases, embeddings and norms are stored as in the
float folder. `quantization_config` = {quant_method: "lmforge", bits, group_size, scheme, modules (lmforge layer
names)}. transformers has no loader for this layout (its CPU int8 layouts need torchao or bitsandbytes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path
from lmforge.hub.families import FAMILIES
from lmforge.hub.family import WeightMap
from lmforge.hub.hf import DTYPES, Checkpoint, import_weights, read_generation_config, read_state_dict
from lmforge.models.wrap import wrap_linears
from lmforge.quant.layers import QuantLinear, check_group_size
from lmforge.quant.model import QUANT_METHOD, bits_of, quantization_config, quantized_layers

PARTS = ("qweight", "scales")
HEAD = "lm_head"


def _module(name: str) -> str:
    return name.removesuffix(".weight")


def _quantized_maps(maps: list[WeightMap], layers: set[str]) -> tuple[list[WeightMap], list[WeightMap]]:
    """(maps of the weights of quantized layers, the others)."""
    quant = [m for m in maps if m.ours.endswith(".weight") and m.ours.removesuffix(".weight") in layers]
    return quant, [m for m in maps if m not in quant]


def save_quantized(model: torch.nn.Module, folder: str | os.PathLike, tokenizer=None,
                   generation_config: dict | None = None) -> Path:
    """Write a quantized model as a folder (atomically)."""
    folder = Path(folder)
    family = FAMILIES[model.config.family]
    layers = quantized_layers(model)
    quant_maps, float_maps = _quantized_maps(family.weight_map(model.config), set(layers))
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for m in quant_maps:
        layer = m.ours.removesuffix(".weight")
        for part in PARTS:
            tensor = state[f"{layer}.{part}"]
            pieces = tensor.split(list(m.sizes), dim=0) if m.sizes else [tensor]
            for name, piece in zip(m.theirs, pieces):
                out[f"{_module(name)}.{part}"] = piece
    for m in float_maps:
        if m.ours not in state:  # a bias-free lmforge model written to a family whose format has biases
            layer = m.ours.rsplit(".", 1)[0]
            rows = layers[layer].out_features if layer in layers else state[layer + ".weight"].shape[0]
            out[m.theirs[0]] = torch.zeros(rows, dtype=next(iter(state.values())).dtype)
            continue
        tensor = state[m.ours]
        pieces = tensor.split(list(m.sizes), dim=0) if m.sizes else [tensor]
        for name, piece in zip(m.theirs, pieces):
            out[name] = piece.t() if m.transpose else piece
    if HEAD in layers:
        for part in PARTS:
            out[f"{HEAD}.{part}"] = state[f"{HEAD}.{part}"]
    elif not model.config.tie_word_embeddings:
        out[f"{HEAD}.weight"] = state[f"{HEAD}.weight"]
    hf = family.config_to_hf(model.config)
    float_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    dtype_name = {v: k for k, v in DTYPES.items()}.get(float_dtype, "float32")
    c = model.config
    hf.update(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
              dtype=dtype_name, torch_dtype=dtype_name, quantization_config=quantization_config(model))
    hf = {k: v for k, v in hf.items() if v is not None}
    with atomic_path(folder, is_dir=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in out.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt", "quantization": QUANT_METHOD})
        if tokenizer is not None:
            tokenizer.save(tmp)
        if generation_config:
            (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    return folder


def read_quantization(hf: dict, source: str) -> tuple[int, int | None, list[str]]:
    """(bits, group size, layer names) of a folder's quantization_config, checked."""
    q = hf["quantization_config"]
    if not isinstance(q, dict) or q.get("quant_method") != QUANT_METHOD:
        method = q.get("quant_method") if isinstance(q, dict) else q
        raise LmforgeError(f"{source}: quantization_config's quant_method {method!r} is not lmforge's; lmforge reads "
                           "only the folders `lmforge convert --quantize` writes")
    bits = bits_of(f"int{q.get('bits')}")
    modules = q.get("modules")
    if not isinstance(modules, list) or not modules:
        raise LmforgeError(f"{source}: quantization_config lists no modules")
    return bits, q.get("group_size") if bits == 4 else None, modules


def load_quantized(folder: Path, hf: dict, dtype: str | None = "float32", device: str = "cpu") -> Checkpoint:
    """Load a quantized folder as it is: its layers become QuantLinear layers holding the stored integers."""
    from lmforge.tokenizer import Tokenizer

    source = str(folder)
    bits, group_size, modules = read_quantization(hf, source)
    family = FAMILIES[hf["model_type"]]
    config = family.config_from_hf(hf)
    stored = {k: v for k, v in read_state_dict(folder).items() if k not in family.unused}
    with torch.device("meta"):
        model = family.model_class(config)
    known = {name: layer for name, layer in model.named_modules() if isinstance(layer, torch.nn.Linear)}
    for name in modules:
        if name not in known:
            raise LmforgeError(f"{source}: quantization_config names the module {name!r}, which this "
                               f"{config.family} model does not have")
        if bits == 4:
            check_group_size(name, known[name].in_features, group_size)
    float_dtype = DTYPES[dtype] if dtype else DTYPES.get(hf.get("torch_dtype") or hf.get("dtype"), torch.float32)
    with torch.device("meta"):
        wrap_linears(model, lambda name, layer: name in modules,
                     lambda name, layer: QuantLinear(layer.in_features, layer.out_features, layer.bias is not None,
                                                     bits, group_size, dtype=float_dtype))
    quant_maps, float_maps = _quantized_maps(family.weight_map(config), set(modules))
    state: dict[str, torch.Tensor] = {}
    for m in quant_maps:
        layer = m.ours.removesuffix(".weight")
        for part in PARTS:
            names = [f"{_module(name)}.{part}" for name in m.theirs]
            state[f"{layer}.{part}"] = _gather(stored, names, source)
    if HEAD in modules:
        for part in PARTS:
            state[f"{HEAD}.{part}"] = _gather(stored, [f"{HEAD}.{part}"], source)
    rest = {k: v for k, v in stored.items() if not k.endswith(tuple("." + p for p in PARTS))}
    tied = model.config.tie_word_embeddings
    if HEAD in modules:  # the head's integers were read above: import_weights must not look for its weight
        model.config.tie_word_embeddings = True
    floats = import_weights(rest, float_maps, model, family.optional_prefix, source)
    model.config.tie_word_embeddings = tied
    _check_quantized(model, state, source)
    state.update({k: v.to(float_dtype) for k, v in floats.items()})
    model.load_state_dict(state, strict=False, assign=True)
    for module in model.modules():  # non-persistent buffers are still on the meta device
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    model.tie_weights()
    model.to(device).eval()
    for layer in quantized_layers(model).values():
        layer.pack()
    tokenizer = Tokenizer.from_pretrained(folder) if any((folder / f).is_file() for f in ("tokenizer.json",
                                                                                           "vocab.json")) else None
    stored_name = {v: k for k, v in DTYPES.items()}.get(float_dtype, str(float_dtype))
    return Checkpoint(model, tokenizer, read_generation_config(folder), folder, stored_name)


def _gather(stored: dict, names: list[str], source: str) -> torch.Tensor:
    missing = [n for n in names if n not in stored]
    if missing:
        raise LmforgeError(f"{source} is missing the tensor {missing[0]} of a quantized module")
    parts = [stored.pop(n) for n in names]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _check_quantized(model: torch.nn.Module, state: dict, source: str) -> None:
    """Shapes and dtypes of the integer weights and scales; scales must be finite and positive."""
    expected = model.state_dict()
    for key, tensor in state.items():
        want = expected[key]
        if tuple(tensor.shape) != tuple(want.shape) or tensor.dtype != want.dtype:
            raise LmforgeError(f"{source}: the quantized tensor {key} is {tensor.dtype} {tuple(tensor.shape)}, but "
                               f"quantization_config needs {want.dtype} {tuple(want.shape)}; the folder is corrupt")
        if key.endswith(".scales") and not bool(torch.isfinite(tensor).all() and (tensor > 0).all()):
            raise LmforgeError(f"{source}: the scales tensor {key} holds values that are not finite and positive; "
                               "the folder is corrupt (convert the float model again)")
