"""What the training loop needs for a run that trains an adapter: the model frozen but for adapter "default"
(new, or from the last checkpoint when resuming), and checkpoints that hold the adapter instead of the model.

Only the adapter's parameters (and the biases LoRA's `bias` setting trains) require gradients, so the
optimizer, built from those, holds state for them alone, and so does every checkpoint's optimizer.pt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lmforge.adapt.adapters import adapter_set, add_adapter, base_bias, get_adapter, write_adapter_into
from lmforge.adapt.config import AdapterConfig
from lmforge.hub.hf import save_folder

TRAINED = "default"  # the name of the adapter a run trains


def prepare_training(model: nn.Module, config: AdapterConfig, base_name: str, tokenizer, seed: int,
                     resume_from: Path | None = None) -> str:
    """Freeze `model` and give it the adapter to train; returns a line that says what trains."""
    for p in model.parameters():
        p.requires_grad_(False)
    if resume_from is not None:
        add_adapter(model, TRAINED, resume_from)
    else:
        settings = config.settings(base_name)
        torch.manual_seed(seed)  # a new adapter's initial values are the run's
        add_adapter(model, TRAINED, settings, init_ids=init_ids(config, tokenizer, model, seed))
    adapter = get_adapter(model, TRAINED)
    for p in adapter.parameters(model):
        p.requires_grad_(True)
    for bias, slices in adapter.biases.items():
        param = base_bias(model, bias)
        param.requires_grad_(True)
        keep = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)
        for start, stop, _ in slices:
            keep[start:stop] = 1
        if not bool(keep.all()):  # a fused bias of which only some modules train (bias lora_only)
            param.register_hook(lambda grad, keep=keep: grad * keep)
    adapter_set(model).trained = TRAINED
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    what = describe(adapter.settings)
    return f"{what}: {trainable:,} trainable parameters ({100 * trainable / total:.2f}% of {total:,})"


def describe(settings) -> str:
    if settings.method == "lora":
        targets = settings.target_modules
        shown = ", ".join(targets) if isinstance(targets, list) else targets
        return f"LoRA r {settings.r}, alpha {settings.lora_alpha:g} on {shown}"
    kind = "prefix tuning" if settings.method == "prefix" else "prompt tuning"
    return f"{kind}, {settings.num_virtual_tokens} virtual tokens"


def init_ids(config: AdapterConfig, tokenizer, model: nn.Module, seed: int) -> list[int] | None:
    """The tokens prefix or prompt tuning starts from: init_text's, or a sample of the vocabulary."""
    if config.init == "text":
        return tokenizer.encode(config.init_text)
    if config.init == "sample_vocab":
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.config.vocab_size, (config.num_virtual_tokens,), generator=generator).tolist()
    return None


def trains_adapter(model: nn.Module) -> bool:
    return adapter_set(model).trained is not None


def save_weights(model: nn.Module, folder: Path, tokenizer=None, generation_config: dict | None = None) -> None:
    """What a training checkpoint holds of the model: the model folder, or for a run that trains an adapter, the
    adapter folder (PEFT's format), with the tokenizer and the generation config beside it either way. A model
    that knows its own folder format (a reward model, a policy with its value model) writes it itself."""
    own = getattr(model, "save_checkpoint", None)
    if own is not None:
        own(folder, tokenizer=tokenizer, generation_config=generation_config)
        return
    if not trains_adapter(model):
        save_folder(model, folder, tokenizer=tokenizer, generation_config=generation_config)
        return
    write_adapter_into(model, folder, adapter_set(model).trained)
    if tokenizer is not None:
        tokenizer.save(folder)
    if generation_config:
        (folder / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
