"""Model configurations: one dataclass per architecture kind, with family knobs and named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError

DECODER_FAMILIES = ("gpt2", "opt", "llama", "mistral", "qwen2", "openai-gpt")


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
    post_norm: bool = False  # GPT-1: x = norm(x + f(x)) in each block, and no final norm
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
    def for_family(cls, family: str, **overrides) -> ModelConfig:
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
    if family == "openai-gpt":
        return dict(family="openai-gpt", norm="layernorm", activation="gelu_tanh", position="learned", bias=True,
                    post_norm=True)
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


ENCDEC_FAMILIES = ("bart", "t5")


@dataclass
class EncDecConfig:
    """An encoder-decoder transformer. The family sets the defaults of the knobs below (see `encdec_family_defaults`);
    the dataclass defaults are T5 v1.0's (t5-small)."""

    family: str = "t5"
    vocab_size: int = 32128
    d_model: int = 512
    n_head: int = 8
    head_dim: int | None = None  # T5's d_kv; None means d_model // n_head
    d_ff: int = 2048
    n_encoder_layer: int = 6
    n_decoder_layer: int | None = None  # None means n_encoder_layer
    dropout: float = 0.1  # on embeddings and residual branches
    attention_dropout: float | None = None  # on attention probabilities; None follows `dropout`
    bias: bool = False  # biases in every linear layer (BART)
    norm: str = "rmsnorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-6
    post_norm: bool = False  # BART: x = norm(x + f(x)); T5: x = x + f(norm(x)), then a final norm per stack
    embedding_norm: bool = False  # BART's layernorm_embedding after the token + position embeddings
    activation: str = "relu"  # gelu_tanh | gelu | relu | silu
    gated_mlp: bool = False  # gated-GELU (T5 v1.1, Flan-T5)
    position: str = "relative"  # relative (T5's bucketed attention bias) | learned (BART)
    max_position_embeddings: int = 1024  # learned positions only
    position_offset: int = 0  # BART stores positions shifted by 2
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    scale_embedding: bool = False  # token embeddings times sqrt(d_model)
    attention_scale: float | None = 1.0  # None means 1/sqrt(head_dim); T5 folds it into the init, so 1.0
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None  # T5: decoder output times d_model**-0.5 before the head; None: T5 and tied
    final_logits_bias: bool = False  # BART's bias on the logits (a buffer)
    initializer_range: float = 0.02  # BART: every weight N(0, initializer_range)
    initializer_factor: float = 1.0  # T5: scales its fan-in initialisation
    decoder_start_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = 1
    pad_token_id: int | None = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # config.json fields we carry through unchanged

    def __post_init__(self) -> None:
        if self.family not in ENCDEC_FAMILIES:
            raise LmforgeError(f"unknown encoder-decoder family '{self.family}'; "
                               f"choose one of {', '.join(ENCDEC_FAMILIES)}")
        if self.position not in ("relative", "learned"):
            raise LmforgeError(f"position must be 'relative' or 'learned', not {self.position!r}")
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise LmforgeError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.d_model // self.n_head
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_encoder_layer
        if self.attention_dropout is None:
            self.attention_dropout = self.dropout
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.family == "t5" and self.tie_word_embeddings

    @classmethod
    def for_family(cls, family: str, **overrides) -> EncDecConfig:
        """A config with the family's architectural defaults, then `overrides`."""
        if family not in ENCDEC_FAMILIES:
            raise LmforgeError(f"unknown encoder-decoder family '{family}'; choose one of {', '.join(ENCDEC_FAMILIES)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise LmforgeError(f"unknown model config field(s) {sorted(unknown)}; valid ones: {sorted(known)}")
        return cls(**{**encdec_family_defaults(family), **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def encdec_family_defaults(family: str) -> dict:
    if family == "bart":
        return dict(family="bart", vocab_size=50265, bias=True, norm="layernorm", norm_eps=1e-5, post_norm=True,
                    embedding_norm=True, activation="gelu", position="learned", position_offset=2,
                    attention_scale=None, attention_dropout=0.0, final_logits_bias=True, decoder_start_token_id=2,
                    bos_token_id=0, eos_token_id=2, pad_token_id=1, forced_eos_token_id=2)
    return dict(family="t5", bias=False, norm="rmsnorm", norm_eps=1e-6, post_norm=False, activation="relu",
                position="relative", attention_scale=1.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)


ENCDEC_PRESETS: dict[str, dict] = {
    "t5-small": dict(family="t5", d_model=512, n_head=8, head_dim=64, d_ff=2048, n_encoder_layer=6),
    "flan-t5-small": dict(family="t5", d_model=512, n_head=6, head_dim=64, d_ff=1024, n_encoder_layer=8,
                          activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=False),
    "bart-base": dict(family="bart", d_model=768, n_head=12, d_ff=3072, n_encoder_layer=6),
    "tiny-t5": dict(family="t5", d_model=64, n_head=4, head_dim=16, d_ff=128, n_encoder_layer=2),
    "tiny-bart": dict(family="bart", d_model=64, n_head=4, d_ff=128, n_encoder_layer=2, max_position_embeddings=256),
}


def encdec_preset(name: str, **overrides) -> EncDecConfig:
    if name not in ENCDEC_PRESETS:
        raise LmforgeError(f"unknown encoder-decoder preset '{name}'; choose one of {', '.join(ENCDEC_PRESETS)}")
    settings = {**ENCDEC_PRESETS[name], **overrides}
    return EncDecConfig.for_family(settings.pop("family"), **settings)
