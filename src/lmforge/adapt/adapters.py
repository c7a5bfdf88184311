"""The adapters a model holds, by name: add one (from a PEFT folder, or new to train), switch between them,
disable them for a while, remove, save or merge one. One adapter is active at a time; the others stay in
memory, so switching needs no reload of the base model.

    add_adapter(model, "sql", "adapters/sql")     # the first one added becomes the active one
    set_adapter(model, "sql")
    with disable_adapter(model): ...               # the base model alone
    remove_adapter(model, "sql")

LoRA adapters live in `LoRALinear` wrappers put in place of the layers they change (models/wrap.py); prefix
and prompt tuning in `model.virtual_tokens`; trained biases (LoRA's bias all / lora_only) in the base model's
own bias parameters, whose original values are put back when the adapter is switched off.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.adapt.lora import LoRA, LoRALinear, LoRAModule
from lmforge.adapt.names import DEFAULT_TARGETS, Slice, hf_linear_modules, select_modules
from lmforge.adapt.peft_format import (
    PREFIX_ENCODER,
    PROMPT_KEY,
    AdapterSettings,
    peft_config,
    read_folder,
    write_folder,
    write_into,
)
from lmforge.adapt.prefix import PrefixTuning, PromptTuning, VirtualTokens
from lmforge.errors import LmforgeError
from lmforge.hub.families import FAMILIES
from lmforge.hub.remote import resolve_model
from lmforge.models.wrap import innermost, unwrap_linears, wrap_linears

ATTRIBUTE = "adapter_set"  # where a model keeps its AdapterSet


@dataclass
class Adapter:
    name: str
    settings: AdapterSettings
    layers: list[str] = field(default_factory=list)  # LoRA: the lmforge layers it changes
    lora_modules: list[str] = field(default_factory=list)  # LoRA: the Hugging Face modules it changes
    virtual: VirtualTokens | None = None
    biases: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)  # bias -> (start, stop, HF module)
    bias_values: dict[str, torch.Tensor] = field(default_factory=dict)  # the biases' values while inactive

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The adapter's own parameters (not the base model's biases it trains)."""
        if self.virtual is not None:
            return list(self.virtual.parameters())
        return [p for layer in self.layers for p in model.get_submodule(layer).adapters[self.name].parameters()]


@dataclass
class AdapterSet:
    adapters: dict[str, Adapter] = field(default_factory=dict)
    active: str | None = None
    original_biases: dict[str, torch.Tensor] = field(default_factory=dict)  # base values of biases adapters train
    trained: str | None = None  # the adapter a training run trains (its checkpoints hold it, not the model)


def _unpack(model) -> nn.Module:
    """A model, or the model of a Checkpoint."""
    return model if isinstance(model, nn.Module) else model.model


def adapter_set(model) -> AdapterSet:
    model = _unpack(model)
    found = model.__dict__.get(ATTRIBUTE)
    if found is None:
        found = model.__dict__[ATTRIBUTE] = AdapterSet()
    return found


def adapter_names(model) -> list[str]:
    return list(adapter_set(model).adapters)


def active_adapter(model) -> str | None:
    return adapter_set(model).active


def get_adapter(model, name: str | None = None) -> Adapter:
    """Adapter `name` (None: the active one) of `model`."""
    aset = adapter_set(model)
    name = aset.active if name is None else name
    if name not in aset.adapters:
        held = ", ".join(aset.adapters) or "none"
        raise LmforgeError(f"the model has no adapter named {name!r} (its adapters: {held})" if name is not None
                           else "the model has no active adapter; add one or set one active")
    return aset.adapters[name]


# ---- adding ------------------------------------------------------------------------------------------

def add_adapter(model, name: str, source: str | Path | AdapterSettings, *, activate: bool | None = None,
                init_ids: list[int] | None = None) -> Adapter:
    """Add adapter `name` to `model`, in place: from a PEFT adapter folder (`source` a path or a Hub name), or new from
    `AdapterSettings` (initialised as PEFT does; `init_ids`: the tokens of a text or of a vocabulary sample that
    prompt or prefix tuning starts from). It becomes active if `activate`, or if no other adapter is active.
    Everything is checked before the model is touched: a folder made for another base changes nothing."""
    model = _unpack(model)
    aset = adapter_set(model)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
        raise LmforgeError(f"adapter name {name!r} must be letters, digits, _ or -")
    if name in aset.adapters:
        raise LmforgeError(f"the model already has an adapter named {name!r}; remove it first or choose another name")
    if isinstance(source, AdapterSettings):
        settings, tensors, where, folder = source, None, "the settings", None
        settings.check()
    else:
        folder = resolve_model(source, need="adapter")  # a local folder, or a Hub name fetched into the cache
        settings, tensors = read_folder(folder)
        where = str(source)
    if settings.method == "lora":
        adapter = _add_lora(model, name, settings, tensors, where)
    else:
        adapter = _add_virtual(model, name, settings, tensors, where, folder, init_ids)
    aset.adapters[name] = adapter
    if activate or (activate is None and aset.active is None):
        _switch(model, aset, name)
    return adapter


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: the value of the first key that is the module's name or a regular
    expression matching its end."""
    for key, value in pattern.items():
        if module == key or re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _add_lora(model: nn.Module, name: str, settings: AdapterSettings, tensors: dict | None, where: str) -> Adapter:
    table = hf_linear_modules(model)
    family = model.config.family
    if tensors is None:
        targets = settings.target_modules
        if targets is None:
            targets = settings.target_modules = list(DEFAULT_TARGETS[family])
        modules = select_modules(table, targets)
    else:
        parsed = _parse_lora_tensors(tensors, table, model, where)
        modules = [m for m in table if m in parsed and "lora_A" in parsed[m]]
        if not modules:
            raise LmforgeError(f"{where} holds no LoRA weights (lora_A/lora_B tensors)")
    plan: dict[str, list[LoRAModule]] = {}
    for module in modules:
        place: Slice = table[module]
        r = int(_pattern_value(settings.rank_pattern, module, settings.r))
        alpha = float(_pattern_value(settings.alpha_pattern, module, settings.lora_alpha))
        scale = alpha / (math.sqrt(r) if settings.use_rslora else r)
        plan.setdefault(place.layer, []).append(LoRAModule(module, place.start, place.stop, r, scale))
    biases = _bias_plan(model, settings, modules)
    if tensors is not None:
        _check_lora_shapes(model, plan, parsed, where)
        _check_bias_tensors(model, biases, parsed, modules, where)
    new_layers = {layer for layer in plan if not isinstance(model.get_submodule(layer), LoRALinear)}
    wrap_linears(model, lambda layer_name, layer: layer_name in new_layers, lambda layer_name, layer: LoRALinear(layer))
    for layer, lora_modules in plan.items():
        wrapper: LoRALinear = model.get_submodule(layer)
        weight = innermost(wrapper.base).weight
        lora = LoRA(wrapper.in_features, lora_modules, settings.lora_dropout, device=weight.device, dtype=weight.dtype)
        lora.reset_parameters(settings.init_lora_weights)
        if tensors is not None:
            with torch.no_grad():
                for i, m in enumerate(lora_modules):
                    lora.lora_A[i].copy_(parsed[m.name]["lora_A"])
                    lora.lora_B[i].copy_(parsed[m.name]["lora_B"])
        wrapper.adapters[name] = lora
        wrapper.train(model.training)  # new modules start in training mode; dropout follows the model's
    adapter = Adapter(name, settings, layers=list(plan), lora_modules=modules, biases=biases)
    adapter.bias_values = _bias_values(model, adapter, parsed if tensors is not None else None)
    return adapter


_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight|(?P<bias_module>.+?)(\.base_layer)?\.bias")


def _parse_lora_tensors(tensors: dict, table: dict[str, Slice], model: nn.Module, where: str) -> dict[str, dict]:
    """{module: {"lora_A": A, "lora_B": B, "bias": b}} from PEFT's keys; a key for a module this model lacks, or
    one that is not LoRA's, is an error that names it."""
    parsed: dict[str, dict] = {}
    family = model.config.family
    bias_modules = {name.removesuffix(".bias") for m in _bias_maps(model) for name in m.theirs}
    for key, value in tensors.items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            raise LmforgeError(f"{where} has the tensor {key}, which is not a LoRA weight lmforge reads "
                               "(lora_A, lora_B, bias)")
        module = match["module"] or match["bias_module"]
        known = module in table if match["module"] else module in bias_modules
        if not known:
            raise LmforgeError(f"{where} has the tensor base_model.model.{key}, for a module this {family} model does "
                               "not have: the adapter was made for another base model")
        parsed.setdefault(module, {})["bias" if match["bias_module"] else match["part"]] = value
    for module, parts in parsed.items():
        if ("lora_A" in parts) != ("lora_B" in parts):
            missing = "lora_B" if "lora_A" in parts else "lora_A"
            raise LmforgeError(f"{where} is missing the tensor base_model.model.{module}.{missing}.weight")
    return parsed


def _check_lora_shapes(model: nn.Module, plan: dict[str, list[LoRAModule]], parsed: dict, where: str) -> None:
    for layer, modules in plan.items():
        in_features = innermost(model.get_submodule(layer)).in_features
        for m in modules:
            for part, shape in (("lora_A", (m.r, in_features)), ("lora_B", (m.stop - m.start, m.r))):
                found = tuple(parsed[m.name][part].shape)
                if found != shape:
                    raise LmforgeError(f"{where}: the tensor base_model.model.{m.name}.{part}.weight has shape {found}, "
                                       f"but this model's {m.name} needs {shape} (rank {m.r}): the adapter was made "
                                       "for another base model")


# ---- trained biases (LoRA's bias all / lora_only) ----------------------------------------------------

def _bias_maps(model: nn.Module) -> list:
    """The weight maps of the model's bias parameters (of linear layers and norms)."""
    return [m for m in FAMILIES[model.config.family].weight_map(model.config) if m.ours.endswith(".bias")]


def _bias_plan(model: nn.Module, settings: AdapterSettings, lora_modules: list[str]) -> dict:
    """{lmforge bias name: [(start, stop, Hugging Face module)]} of the biases the adapter trains."""
    if settings.bias == "none":
        return {}
    plan: dict[str, list[tuple[int, int, str]]] = {}
    for m in _bias_maps(model):
        param = base_bias(model, m.ours)
        if param is None:
            continue
        start = 0
        for name, size in zip(m.theirs, m.sizes or (param.shape[0],)):
            module = name.removesuffix(".bias")
            if settings.bias == "all" or module in lora_modules:
                plan.setdefault(m.ours, []).append((start, start + size, module))
            start += size
    return plan


def base_bias(model: nn.Module, name: str) -> nn.Parameter | None:
    """The bias parameter `name` (a weight-map name, `blocks.0.attn.qkv.bias`) under any wrapper of its layer."""
    layer, _, attr = name.rpartition(".")
    try:
        return getattr(innermost(model.get_submodule(layer)), attr, None)
    except AttributeError:
        return None


def _bias_key(module: str, lora_modules: list[str]) -> str:
    return f"{module}.base_layer.bias" if module in lora_modules else f"{module}.bias"


def _check_bias_tensors(model: nn.Module, biases: dict, parsed: dict, lora_modules: list[str], where: str) -> None:
    wanted = {module for slices in biases.values() for _, _, module in slices}
    for module, parts in parsed.items():
        if "bias" in parts and module not in wanted:
            raise LmforgeError(f"{where} has the tensor base_model.model.{_bias_key(module, lora_modules)}, which its "
                               "bias setting does not train")
    for slices in biases.values():
        for start, stop, module in slices:
            key = f"base_model.model.{_bias_key(module, lora_modules)}"
            if "bias" not in parsed.get(module, {}):
                raise LmforgeError(f"{where} is missing the tensor {key}")
            if tuple(parsed[module]["bias"].shape) != (stop - start,):
                raise LmforgeError(f"{where}: the tensor {key} has shape {tuple(parsed[module]['bias'].shape)}, but this "
                                   f"model's {module} needs ({stop - start},): the adapter was made for another base model")


def _bias_values(model: nn.Module, adapter: Adapter, parsed: dict | None) -> dict[str, torch.Tensor]:
    """The values the adapter's biases take while it is active: the folder's, or the base model's for a new one."""
    values = {}
    for name, slices in adapter.biases.items():
        value = base_bias(model, name).detach().clone()
        if parsed is not None:
            for start, stop, module in slices:
                value[start:stop] = parsed[module]["bias"]
        values[name] = value
    return values


# ---- prefix and prompt tuning --------------------------------------------------------------------------

def _add_virtual(model: nn.Module, name: str, settings: AdapterSettings, tensors: dict | None, where: str,
                 folder: Path | None, init_ids: list[int] | None) -> Adapter:
    projection = None
    if settings.method == "prefix" and settings.prefix_projection and (tensors is None or
                                                                        (folder / PREFIX_ENCODER).is_file()):
        projection = settings.encoder_hidden_size or _token_dim(model)
    if settings.method == "prefix":
        virtual: VirtualTokens = PrefixTuning(model, settings.num_virtual_tokens, projection)
    else:
        virtual = PromptTuning(model, settings.num_virtual_tokens)
    if tensors is None:
        if init_ids is not None:
            if settings.method == "prefix":
                virtual.init_from_text(model, init_ids)
            else:
                virtual.init_from_tokens(model, init_ids)
    elif projection:  # resuming a run that trains the projection: its own parameters
        virtual.load_state_dict(load_file(folder / PREFIX_ENCODER))
    else:
        _load_prompt_table(virtual, tensors, settings, where)
    return Adapter(name, settings, virtual=virtual.train(model.training))


def _token_dim(model: nn.Module) -> int:
    c = model.config
    return (c.n_head if model.is_encoder_decoder else c.n_kv_head) * c.head_dim


def _load_prompt_table(virtual: VirtualTokens, tensors: dict, settings: AdapterSettings, where: str) -> None:
    extra = sorted(set(tensors) - {PROMPT_KEY})
    if extra:
        raise LmforgeError(f"{where} has the tensor {extra[0]}, which {settings.method} tuning does not have")
    if PROMPT_KEY not in tensors:
        raise LmforgeError(f"{where} is missing the tensor {PROMPT_KEY}")
    table = tensors[PROMPT_KEY]
    if isinstance(virtual, PrefixTuning):
        target, expected = virtual.table, (virtual.length, virtual.width)
    else:
        target, expected = virtual.embeddings, tuple(virtual.embeddings.shape)
        table = table[:expected[0]]  # a seq2seq folder may hold a second, decoder half that PEFT never uses
    if tuple(table.shape) != expected:
        raise LmforgeError(f"{where}: the tensor {PROMPT_KEY} has shape {tuple(tensors[PROMPT_KEY].shape)}, but this "
                           f"model needs {expected} for {settings.num_virtual_tokens} virtual tokens: the adapter was "
                           "made for another base model")
    with torch.no_grad():
        target.copy_(table)


def prompt_dims(model: nn.Module, settings: AdapterSettings) -> dict:
    """The sizes PEFT records for prefix and prompt tuning (the prefix's per key/value head, as PEFT has for
    grouped-query attention)."""
    c, seq2seq = model.config, model.is_encoder_decoder
    layers = c.n_decoder_layer if seq2seq else c.n_layer
    if settings.method == "prefix":
        heads = c.n_head if seq2seq else c.n_kv_head
        return {"token_dim": heads * c.head_dim, "num_attention_heads": heads, "num_layers": layers,
                "num_transformer_submodules": 2 if seq2seq else 1}
    return {"token_dim": c.d_model if seq2seq else c.n_embd, "num_attention_heads": c.n_head, "num_layers": layers,
            "num_transformer_submodules": 1}


# ---- switching -------------------------------------------------------------------------------------

def _switch(model: nn.Module, aset: AdapterSet, name: str | None) -> None:
    """Make adapter `name` (None: none) the one that runs."""
    old = aset.adapters.get(aset.active) if aset.active is not None else None
    with torch.no_grad():
        if old is not None:
            for bias in old.biases:
                param = base_bias(model, bias)
                old.bias_values[bias] = param.detach().clone()
                param.copy_(aset.original_biases[bias])
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.active = name if name in module.adapters else None
        new = aset.adapters.get(name) if name is not None else None
        model.virtual_tokens = new.virtual if new is not None else None
        if new is not None:
            for bias, value in new.bias_values.items():
                param = base_bias(model, bias)
                aset.original_biases.setdefault(bias, param.detach().clone())
                param.copy_(value)
    aset.active = name


def set_adapter(model, name: str) -> None:
    """Make adapter `name` the active one (the others stay, inactive)."""
    model = _unpack(model)
    get_adapter(model, name)
    _switch(model, adapter_set(model), name)


@contextlib.contextmanager
def disable_adapter(model) -> Iterator[None]:
    """Within the block the base model runs alone; the active adapter comes back after it."""
    model = _unpack(model)
    aset = adapter_set(model)
    previous = aset.active
    _switch(model, aset, None)
    try:
        yield
    finally:
        _switch(model, aset, previous)


def remove_adapter(model, name: str) -> None:
    """Drop adapter `name`; layers left without adapters get their plain linear layer back. If it was the active
    one, no adapter is active afterwards."""
    model = _unpack(model)
    adapter = get_adapter(model, name)
    aset = adapter_set(model)
    if aset.active == name:
        _switch(model, aset, None)
    emptied = []
    for layer in adapter.layers:
        wrapper: LoRALinear = model.get_submodule(layer)
        del wrapper.adapters[name]
        if not wrapper.adapters:
            emptied.append(layer)
    unwrap_linears(model, lambda layer_name, layer: layer_name in emptied)
    del aset.adapters[name]


def merge_adapter(model, name: str | None = None) -> None:
    """Fold LoRA adapter `name` (None: the active one) into the base weights and drop it: the model then computes
    what it computed with the adapter active, without it. Prefix and prompt adapters cannot be merged."""
    model = _unpack(model)
    adapter = get_adapter(model, name)
    if adapter.settings.method != "lora":
        raise LmforgeError(f"adapter {adapter.name!r} is {adapter.settings.method} tuning, whose virtual tokens cannot "
                           "be merged into the weights; only LoRA adapters merge (use it with --adapter instead)")
    quantized = [layer for layer in adapter.layers if getattr(innermost(model.get_submodule(layer)), "quantized", False)]
    if quantized:  # lmforge.quant: integer weights cannot take a float update
        raise LmforgeError(f"layer {quantized[0]} of the base model holds quantized (integer) weights, into which a "
                           "LoRA adapter cannot be merged; merge it into the float base model, then quantize the result")
    aset = adapter_set(model)
    set_adapter(model, adapter.name)
    for layer in adapter.layers:
        model.get_submodule(layer).merge(adapter.name)
    for bias in adapter.biases:  # its values stay in the base model
        aset.original_biases[bias] = base_bias(model, bias).detach().clone()
    remove_adapter(model, adapter.name)


# ---- saving ----------------------------------------------------------------------------------------

def adapter_tensors(model: nn.Module, adapter: Adapter) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the tensors of adapter_model.safetensors by PEFT's key without its prefix, the extra tensors of a prefix
    projection being trained)."""
    if adapter.virtual is not None:
        virtual = adapter.virtual
        if isinstance(virtual, PrefixTuning):
            extra = dict(virtual.state_dict()) if hasattr(virtual, "transform") else {}
            return {PROMPT_KEY: virtual.values_table().detach()}, extra
        return {PROMPT_KEY: virtual.embeddings.detach()}, {}
    tensors = {}
    for layer in adapter.layers:
        lora = model.get_submodule(layer).adapters[adapter.name]
        for i, m in enumerate(lora.modules_):
            tensors[f"{m.name}.lora_A.weight"] = lora.lora_A[i].detach()
            tensors[f"{m.name}.lora_B.weight"] = lora.lora_B[i].detach()
    active = adapter_set(model).active == adapter.name
    for bias, slices in adapter.biases.items():
        value = base_bias(model, bias).detach() if active else adapter.bias_values[bias]
        for start, stop, module in slices:
            tensors[_bias_key(module, adapter.lora_modules)] = value[start:stop]
    return tensors, {}


def adapter_config(model: nn.Module, adapter: Adapter, base_name: str | None = None) -> dict:
    settings = adapter.settings if base_name is None else replace(adapter.settings, base_model_name_or_path=base_name)
    return peft_config(settings, model, prompt_dims(model, settings) if adapter.virtual is not None else {})


def save_adapter(model, folder: str | Path, name: str | None = None, base_name: str | None = None) -> Path:
    """Write adapter `name` (None: the active one) as a PEFT adapter folder; `base_name` is recorded as
    base_model_name_or_path (else what the adapter records)."""
    model = _unpack(model)
    adapter = get_adapter(model, name)
    tensors, extra = adapter_tensors(model, adapter)
    return write_folder(folder, adapter_config(model, adapter, base_name), tensors, extra)


def write_adapter_into(model: nn.Module, folder: Path, name: str | None = None) -> None:
    """`save_adapter` into an existing folder (a training checkpoint being written)."""
    adapter = get_adapter(model, name)
    tensors, extra = adapter_tensors(model, adapter)
    write_into(folder, adapter_config(model, adapter), tensors, extra)
