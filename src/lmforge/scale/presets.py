"""The GPT family as named shapes: GPT-1, the four GPT-2 sizes and the eight GPT-3 sizes.

GPT-1 (Radford et al. 2018): 12 post-norm blocks of width 768, learned positions, 512 context, a 40,478-token
BPE. GPT-2 (Radford et al. 2019): pre-norm, 1,024 context, 50,257 tokens. GPT-3 (Brown et al. 2020, Table 2.1):
the GPT-2 architecture at 2,048 context; its layers alternate dense and locally banded sparse attention, which
changes neither the parameters nor (to first order) the FLOPs counted here, and dense attention is used.

Two entries of Table 2.1 contradict the rest of the table and the parameter counts it prints; they are read
the way the counts say:
  * GPT-3 XL (1.3B): d_model 2,048 with d_head 128 gives 16 heads, not the table's 24 (24 × 128 = 3,072 would
    make a 1.5B model, and 2,048 / 24 is not a whole head size).
  * GPT-3 13B: d_model 5,120 = 40 heads × 128, not the table's 5,140 (which 40 heads do not divide).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config import PRESETS, ModelConfig, preset
from lmforge.errors import LmforgeError

GPT2_VOCAB = 50257


@dataclass(frozen=True)
class GptPreset:
    name: str
    model: str  # the paper's name for it
    paper_parameters: str  # as the paper prints it
    shape: dict  # ModelConfig fields
    note: str = ""


def _gpt2(name: str, model: str, size: str, n_layer: int, n_embd: int, n_head: int) -> GptPreset:
    return GptPreset(name, model, size, dict(family="gpt2", vocab_size=GPT2_VOCAB, n_layer=n_layer, n_embd=n_embd,
                                             n_head=n_head, block_size=1024))


def _gpt3(name: str, model: str, size: str, n_layer: int, n_embd: int, head_dim: int, note: str = "") -> GptPreset:
    return GptPreset(name, model, size, dict(family="gpt2", vocab_size=GPT2_VOCAB, n_layer=n_layer, n_embd=n_embd,
                                             n_head=n_embd // head_dim, block_size=2048),
                     note or "dense attention (GPT-3 alternates dense and locally banded sparse layers)")


GPT_FAMILY: dict[str, GptPreset] = {p.name: p for p in [
    GptPreset("openai-gpt", "GPT-1", "117M", dict(family="openai-gpt", vocab_size=40478, n_layer=12, n_embd=768,
                                                  n_head=12, block_size=512),
              "post-norm blocks, learned positions, no final norm"),
    _gpt2("gpt2", "GPT-2 small", "117M", 12, 768, 12),
    _gpt2("gpt2-medium", "GPT-2 medium", "345M", 24, 1024, 16),
    _gpt2("gpt2-large", "GPT-2 large", "762M", 36, 1280, 20),
    _gpt2("gpt2-xl", "GPT-2 XL", "1542M", 48, 1600, 25),
    _gpt3("gpt3-125m", "GPT-3 Small", "125M", 12, 768, 64),
    _gpt3("gpt3-350m", "GPT-3 Medium", "350M", 24, 1024, 64),
    _gpt3("gpt3-760m", "GPT-3 Large", "760M", 24, 1536, 96),
    _gpt3("gpt3-1.3b", "GPT-3 XL", "1.3B", 24, 2048, 128,
          "16 heads of 128 (Table 2.1 prints 24 heads, which contradicts d_model 2,048 and the 1.3B count); "
          "dense attention"),
    _gpt3("gpt3-2.7b", "GPT-3 2.7B", "2.7B", 32, 2560, 80),
    _gpt3("gpt3-6.7b", "GPT-3 6.7B", "6.7B", 32, 4096, 128),
    _gpt3("gpt3-13b", "GPT-3 13B", "13.0B", 40, 5120, 128,
          "d_model 5,120 = 40 × 128 (Table 2.1 prints 5,140, which 40 heads do not divide); dense attention"),
    _gpt3("gpt3-175b", "GPT-3 175B", "175.0B", 96, 12288, 128),
]}


def preset_names() -> list[str]:
    return list(GPT_FAMILY) + [n for n in PRESETS if n not in GPT_FAMILY]


def preset_config(name: str) -> ModelConfig:
    """The ModelConfig of a GPT-family preset or of one of lmforge's own presets (config.PRESETS)."""
    if name in GPT_FAMILY:
        shape = dict(GPT_FAMILY[name].shape)
        return ModelConfig.for_family(shape.pop("family"), **shape)
    if name in PRESETS:
        return preset(name)
    raise LmforgeError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
