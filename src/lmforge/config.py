"""Model configurations: one dataclass per architecture kind, with family knobs and named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError

DECODER_FAMILIES = ("gpt2", "opt", "llama", "mistral", "qwen2")


@dataclass
class ModelConfig:
    """A decoder-only transformer. The family sets the defaults of the knobs below (see `family_defaults`)."""

    family: str = "gpt2"
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # grouped-query attention; None means n_head
    head_dim: int | None = None  # None means n_embd // n_head
    intermediate_size: int | None = None  # None means 4 * n_embd
    block_size: int = 1024  # context length (max position embeddings)
    dropout: float = 0.0
    bias: bool = True  # biases in every linear layer and norm (GPT-2, OPT)
    qkv_bias: bool | None = None  # q/k/v biases only (Qwen2); None follows `bias`
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # gelu_tanh | gelu | relu | silu
    gated_mlp: bool = False  # SwiGLU-style gate (Llama family)
    position: str = "learned"  # learned | rope
    position_offset: int = 0  # OPT stores positions shifted by 2
    rope_theta: float = 10000.0
    sliding_window: int | None = None  # Mistral; sequences beyond it are refused
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # config.json fields we carry through unchanged

    def __post_init__(self) -> None:
        if self.family not in DECODER_FAMILIES:
            raise LmforgeError(f"unknown model family '{self.family}'; choose one of {', '.join(DECODER_FAMILIES)}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise LmforgeError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise LmforgeError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        if self.qkv_bias is None:
            self.qkv_bias = self.bias

    @classmethod
    def for_family(cls, family: str, **overrides) -> "ModelConfig":
        """A config with the family's architectural defaults, then `overrides`."""
        if family not in DECODER_FAMILIES:
            raise LmforgeError(f"unknown model family '{family}'; choose one of {', '.join(DECODER_FAMILIES)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise LmforgeError(f"unknown model config field(s) {sorted(unknown)}; valid ones: {sorted(known)}")
        return cls(**{**family_defaults(family), **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def family_defaults(family: str) -> dict:
    if family == "gpt2":
        return dict(family="gpt2", norm="layernorm", activation="gelu_tanh", position="learned", bias=True)
    if family == "opt":
        return dict(family="opt", norm="layernorm", activation="relu", position="learned", bias=True,
                    position_offset=2)
    return dict(family=family, norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True,
                position="rope", bias=False, qkv_bias=family == "qwen2", tie_word_embeddings=False)


PRESETS: dict[str, dict] = {
    "gpt2": dict(family="gpt2", vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(family="gpt2", vocab_size=50257, n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "tiny-gpt2": dict(family="gpt2", n_layer=2, n_head=2, n_embd=64, block_size=128),
    "tiny-llama": dict(family="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=172,
                       block_size=256),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise LmforgeError(f"unknown model preset '{name}'; choose one of {', '.join(PRESETS)}")
    settings = {**PRESETS[name], **overrides}
    return ModelConfig.for_family(settings.pop("family"), **settings)
