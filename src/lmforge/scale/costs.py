"""The arithmetic of a model: parameters, training FLOPs, memory, KV cache, and the compute of a training run.

Parameters are counted on a model built on the meta device (no memory is allocated, so GPT-3 175B counts in
a second), exactly as transformers' `num_parameters()` counts them: tied weights once, and "without
embeddings" leaves out every nn.Embedding (token and learned position tables; a tied output head with them).

Training FLOPs per token, two ways:
  * 6N, N every parameter: 2N multiply-adds forward, 4N backward (Kaplan et al. 2020, Hoffmann et al. 2022,
    and the GPT-3 paper's Table D.1, which gives 175B on 300B tokens as 3.14e23 FLOPs);
  * Kaplan et al. 2020, Table 1 ("Total"): the forward pass costs 2·N + 2·n_layer·n_ctx·d_attn, N the
    parameters without embeddings and the second term the attention scores and their weighted sum over a
    context of n_ctx (d_attn = heads × head size); training is three forward passes. Like the table it leaves
    out the embedding and the output head (the head is counted where it is a matrix of its own, untied).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lmforge.errors import LmforgeError

PF_DAY = 1e15 * 24 * 3600  # FLOPs in one petaflop/s-day
BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}
MIXED_BYTES_PER_PARAM = 16  # bf16 weights (2) and gradients (2), fp32 master weights (4), AdamW moments (4 + 4)


@dataclass
class ModelCosts:
    family: str
    n_layer: int
    n_embd: int
    n_head: int
    head_dim: int
    n_kv_head: int
    context: int
    vocab_size: int
    parameters: int
    parameters_without_embeddings: int
    flops_per_token_6n: float
    flops_per_token_kaplan: float
    memory: dict  # dtype -> {weights, gradients, adamw, total} in bytes; "mixed": bf16 training with fp32 states
    kv_cache_per_token: dict  # dtype -> bytes per token of context (keys and values of every layer)

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """As transformers' `num_parameters(exclude_embeddings=...)`: each parameter once (tied ones too)."""
    skip = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def meta_model(config) -> nn.Module:
    """The model of `config` with no storage behind it (the meta device)."""
    from lmforge.config import ModelConfig
    from lmforge.models.decoder import DecoderLM

    if not isinstance(config, ModelConfig):
        from lmforge.models.encdec import EncoderDecoderLM

        with torch.device("meta"):
            return EncoderDecoderLM(config)
    with torch.device("meta"):
        return DecoderLM(config)


def model_costs(config, context: int | None = None) -> ModelCosts:
    """Every cost of a decoder-only or encoder-decoder `config`, at `context` tokens (default: its own)."""
    model = meta_model(config)
    n_total = count_parameters(model)
    n_body = count_parameters(model, exclude_embeddings=True)
    decoder = hasattr(config, "n_embd")
    n_layer = config.n_layer if decoder else config.n_decoder_layer
    width = config.n_embd if decoder else config.d_model
    n_kv_head = config.n_kv_head if decoder else config.n_head
    n_ctx = context or (config.block_size if decoder else config.max_position_embeddings)
    d_attn = config.n_head * config.head_dim
    attention_layers = n_layer if decoder else config.n_encoder_layer + 2 * n_layer  # self- and cross-attention
    forward = 2 * n_body + 2 * attention_layers * n_ctx * d_attn  # Kaplan et al. Table 1, "Total"
    memory = {dtype: _training_memory(n_total, size) for dtype, size in BYTES.items()}
    memory["mixed"] = {"weights": 2 * n_total, "gradients": 2 * n_total, "adamw": 12 * n_total,
                       "total": MIXED_BYTES_PER_PARAM * n_total}
    kv = {dtype: 2 * n_layer * n_kv_head * config.head_dim * size for dtype, size in BYTES.items()}
    return ModelCosts(config.family, n_layer, width, config.n_head, config.head_dim, n_kv_head, n_ctx,
                      config.vocab_size, n_total, n_body, 6.0 * n_total, 3.0 * forward, memory, kv)


def _training_memory(n: int, size: int) -> dict:
    """Weights, gradients and AdamW's two moments, all held in one dtype of `size` bytes."""
    return {"weights": n * size, "gradients": n * size, "adamw": 2 * n * size, "total": 4 * n * size}


@dataclass
class TrainingCompute:
    tokens: float
    flops: float  # 6N per token
    pf_days: float
    flops_kaplan: float
    flops_per_second: float
    seconds: float  # at flops_per_second

    def to_dict(self) -> dict:
        return asdict(self)


def training_compute(costs: ModelCosts, tokens: float, flops_per_second: float) -> TrainingCompute:
    if tokens <= 0:
        raise LmforgeError(f"the number of training tokens must be positive, not {tokens:g}")
    if flops_per_second <= 0:
        raise LmforgeError(f"--flops-per-second must be positive, not {flops_per_second:g}")
    flops = costs.flops_per_token_6n * tokens
    return TrainingCompute(tokens, flops, flops / PF_DAY, costs.flops_per_token_kaplan * tokens, flops_per_second,
                           flops / flops_per_second)


_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_amount(text: str | float, what: str) -> float:
    """'300e9', '300B', '2.5T', '1e15' as a number; K, M, B (or G), T and P are powers of a thousand."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmbgtp]?)\s*", str(text), re.IGNORECASE)
    if not match:
        raise LmforgeError(f"cannot read {what} {text!r}; write a number such as 3e11 or 300B")
    try:
        value = float(match.group(1))
    except ValueError:
        raise LmforgeError(f"cannot read {what} {text!r}; write a number such as 3e11 or 300B") from None
    return value * _SUFFIX.get(match.group(2).lower(), 1.0)


def measure_flops_per_second(seconds: float = 0.3, size: int = 512) -> float:
    """This machine's float32 matmul throughput: square matmuls for about `seconds` (2·size³ FLOPs each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    count, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        a @ b
        count += 1
    return 2 * size ** 3 * count / elapsed


def human(n: float, unit: str = "") -> str:
    """1.2 K, 3.4 M, 5.6 B, 7.8 T: a count with a thousands suffix."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def human_bytes(n: float) -> str:
    for suffix, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{n:.0f} B"


def human_duration(seconds: float) -> str:
    for suffix, scale in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= scale:
            return f"{seconds / scale:,.3g} {suffix}"
    return f"{seconds:.3g} s"
