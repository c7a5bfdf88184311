"""What every checkpoint family provides (`Family`), and how one lmforge tensor maps to Hugging Face's (`WeightMap`).

The families themselves are in families.py (decoder-only) and seq2seq_families.py (encoder-decoder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from torch import nn

from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class WeightMap:
    """One lmforge tensor and the Hugging Face tensors it is made of: several are concatenated along dim 0
    (fused q/k/v, fused gate/up); `transpose` handles GPT-2's Conv1D layout."""

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...] | None = None  # split sizes along dim 0 when `theirs` has several tensors
    transpose: bool = False
    aliases: tuple[str, ...] = ()  # other names of the same tensor, accepted on import, never written
    optional: bool = False  # absent from some checkpoints, and zeros then (BART's final_logits_bias)


@dataclass(frozen=True)
class Family:
    """A Hugging Face `model_type`: its config both ways, its weight names, and the lmforge model it loads into."""

    config_from_hf: Callable[[dict], Any]
    config_to_hf: Callable[[Any], dict]
    weight_map: Callable[[Any], list[WeightMap]]
    model_class: type[nn.Module]
    # prefix some checkpoints omit (saved from the base model rather than the LM-head model)
    optional_prefix: str = ""
    unused: tuple[str, ...] = ()  # tensors some checkpoints hold that the model never reads


def refuse(family: str, field: str, value, why: str) -> NoReturn:
    raise LmforgeError(f"{family} checkpoints with {field}={value!r} are not supported ({why})")
