"""Will it fit? Memory estimates made before the big allocations, refused with the estimate and the limit rather
than the operating system killing the process mid-run.

    training     weights + gradients + AdamW's two moments (of the trainable parameters) + the activations one
                 micro-batch keeps for the backward pass (Korthikanti et al. 2022, "Reducing Activation
                 Recomputation in Large Transformer Models": 34·h + 5·a·s values per token and layer, in
                 half-precision bytes) + the logits with their softmax and gradient
    generation   weights + the KV cache of every sequence decoded together at full length + the logits

The limit is `--max-memory` (`max_memory` in a training config: 512MB, 8GiB, 1.5G or bytes) or, by default, the
memory the machine has available now (MemAvailable in /proc/meminfo; the free memory of the GPU on CUDA).
Estimates are rough (within a factor of about two): they catch what cannot fit, not what barely fits.
"""

from __future__ import annotations

import os
import re

import torch

from lmforge.errors import LmforgeError

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
         "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str | int | float, what: str = "--max-memory") -> int:
    """'512MB', '8GiB', '1.5G', '1000000' as bytes, or a one-sentence error."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in UNITS or not 0 < float(match.group(1)) < 1e30:
        raise LmforgeError(f"{what} must be a positive size such as 512MB, 8GiB or 1.5G, not {text!r}")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def format_size(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def available(device: torch.device | str = "cpu") -> int:
    """The memory this process could still allocate on `device`, in bytes."""
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LmforgeError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LmforgeError(f"device {device} was asked for but no CUDA GPU is available; use cpu")
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check(parts: dict[str, float], max_memory: str | None, device: torch.device | str, what: str, fix: str) -> None:
    """Refuse (one sentence) when the estimated `parts` add up to more than the limit."""
    limit = parse_size(max_memory) if max_memory else available(device)
    total = sum(parts.values())
    if total <= limit:
        return
    where = f"--max-memory is {format_size(limit)}" if max_memory else \
        f"{'the GPU' if str(device).startswith('cuda') else 'the machine'} has {format_size(limit)} available"
    detail = ", ".join(f"{name} {format_size(size)}" for name, size in parts.items() if size)
    raise LmforgeError(f"{what} needs about {format_size(total)} of memory ({detail}) but {where}; {fix}")


def shape(config) -> dict:
    """Layers, width, heads, key/value width and vocabulary of a decoder-only or encoder-decoder config."""
    width = getattr(config, "n_embd", None) or config.d_model
    heads = config.n_head
    head_dim = getattr(config, "head_dim", None) or width // heads
    kv_heads = getattr(config, "n_kv_head", None) or heads
    decoder_layers = getattr(config, "n_layer", None) or config.n_decoder_layer or config.n_encoder_layer
    layers = decoder_layers + (getattr(config, "n_encoder_layer", None) or 0)
    return {"layers": layers, "decoder_layers": decoder_layers, "width": width, "heads": heads,
            "kv_width": kv_heads * head_dim, "vocab": config.vocab_size, "encoder_decoder": not hasattr(config, "n_embd")}


def training_parts(model: torch.nn.Module, rows: int, length: int, dtype: str) -> dict[str, float]:
    """What one step of training `model` on micro-batches of `rows` x `length` tokens holds at its peak."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    s = shape(model.config)
    half = 1 if dtype in ("bfloat16", "float16") else 2  # the formula counts 16-bit values; float32 doubles it
    per_layer = rows * length * (34 * s["width"] + 5 * s["heads"] * length) * half
    return {"weights": params, "gradients": trainable * 4, "optimizer": trainable * 8,
            "activations": s["layers"] * per_layer + rows * length * s["vocab"] * 4 * 3}


def generation_parts(config, parameters: int, bytes_per_value: int, sequences: int, length: int) -> dict[str, float]:
    """What decoding `sequences` sequences of `length` tokens together holds."""
    s = shape(config)
    cache_layers = s["decoder_layers"] * (2 if s["encoder_decoder"] else 1)  # self- and cross-attention caches
    return {"weights": parameters * bytes_per_value,
            "KV cache": 2 * cache_layers * s["kv_width"] * sequences * length * bytes_per_value,
            "logits": sequences * s["vocab"] * 4 * 2}


def training_batch(config, model: torch.nn.Module) -> tuple[int, int]:
    """(rows, length) of a training micro-batch: batch_size windows of the context, or batch_tokens in rows of
    the longest source."""
    length = getattr(getattr(config, "data", None), "max_source_length", None) or \
        getattr(model.config, "block_size", None) or 1024
    tokens = getattr(config, "batch_tokens", None) or getattr(config, "batch_size", 1) * length
    return max(1, tokens // length), length


def stored_model(name_or_folder) -> tuple[object, int]:
    """The config and the parameter count of a model folder or Hub name, read before any weight is."""
    from lmforge.hub.families import FAMILIES
    from lmforge.hub.hf import read_config
    from lmforge.hub.remote import resolve_model

    hf = read_config(resolve_model(name_or_folder))
    family = FAMILIES[hf["model_type"]]
    config = family.config_from_hf(hf)
    with torch.device("meta"):
        model = family.model_class(config)
    return config, sum(p.numel() for p in model.parameters())


def check_generation(name_or_folder, sequences: int, max_memory: str | None, device: str) -> None:
    """Refuse a model whose weights and full-length KV cache for `sequences` sequences cannot fit."""
    config, parameters = stored_model(name_or_folder)
    context = getattr(config, "block_size", None) or getattr(config, "max_position_embeddings", None) or 1024
    check(generation_parts(config, parameters, 4, sequences, context), max_memory, device,
          f"decoding {sequences} sequence(s) of up to {context} tokens with {name_or_folder}",
          "decode fewer sequences together (num_beams, num_return_sequences, batch size), or set --max-memory "
          "if the estimate is wrong")
