"""Hugging Face module names, as PEFT and transformers spell them, and where each module is in an lmforge model.

lmforge fuses some of transformers' linear layers (q/k/v into `attn.qkv`, gate/up into `mlp.fc`, BART's and
T5's k/v into `kv`), so one Hugging Face module is a slice of the output rows of one lmforge layer. The
family weight maps of hub/ say which (`WeightMap.sizes`); `hf_linear_modules` turns them into that table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lmforge.errors import LmforgeError
from lmforge.hub.families import FAMILIES
from lmforge.models.wrap import innermost

# PEFT's target modules when a LoRA config names none (peft.utils.constants, for these model types)
DEFAULT_TARGETS = {"gpt2": ["c_attn"], "opt": ["q_proj", "v_proj"], "llama": ["q_proj", "v_proj"],
                   "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "bart": ["q_proj", "v_proj"],
                   "t5": ["q", "v"]}


@dataclass(frozen=True)
class Slice:
    """Output rows [start, stop) of the lmforge linear layer `layer`: one Hugging Face module."""

    layer: str
    start: int
    stop: int


def hf_linear_modules(model: nn.Module) -> dict[str, Slice]:
    """Every linear module of the transformers model of `model`'s family, by its name there
    (`model.layers.0.self_attn.q_proj`), and where it is in `model`; in weight-map order. The output head
    is not listed."""
    table: dict[str, Slice] = {}
    for m in FAMILIES[model.config.family].weight_map(model.config):
        layer, _, param = m.ours.rpartition(".")
        if param != "weight":
            continue
        try:
            linear = innermost(model.get_submodule(layer))
        except AttributeError:
            continue
        if not isinstance(linear, nn.Linear):
            continue
        start = 0
        for name, size in zip(m.theirs, m.sizes or (linear.out_features,)):
            table[name.removesuffix(".weight")] = Slice(layer, start, start + size)
            start += size
    return table


def short_names(table: dict[str, Slice]) -> list[str]:
    """The last part of each module name, once each (`q_proj, k_proj, ...`)."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in table))


def select_modules(table: dict[str, Slice], targets: str | list[str]) -> list[str]:
    """The module names `targets` picks, as PEFT's `target_modules` does: a list of names, each matching a module
    whose name is, or ends in, `.` + it; a string: a regular expression the whole name must match, or
    `all-linear`. A name or pattern that picks nothing is an error that lists the valid names."""
    if targets == "all-linear":
        return list(table)
    if isinstance(targets, str):
        chosen = [name for name in table if re.fullmatch(targets, name)]
        if not chosen:
            raise unknown_target(f"the pattern {targets!r}", table)
        return chosen
    for target in targets:
        if not any(_matches(name, target) for name in table):
            raise unknown_target(repr(target), table)
    return [name for name in table if any(_matches(name, target) for target in targets)]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def unknown_target(what: str, table: dict[str, Slice]) -> LmforgeError:
    return LmforgeError(f"{what} names no linear module of this model; its modules are {', '.join(short_names(table))} "
                        "(or all-linear, or a regular expression over full names such as "
                        f"{next(iter(table), '')})")
