"""PEFT's adapter folder: adapter_config.json and adapter_model.safetensors, read and written exactly.

    adapter_config.json        PEFT's field names and values: peft_type (LORA, PREFIX_TUNING, PROMPT_TUNING),
                               task_type (CAUSAL_LM, SEQ_2_SEQ_LM), base_model_name_or_path, and the method's own
    adapter_model.safetensors  LoRA: base_model.model.<module>.lora_A.weight (r, in), .lora_B.weight (out, r), and
                               with bias all/lora_only the biases (<module>.base_layer.bias on a LoRA module);
                               prefix and prompt tuning: prompt_embeddings

A folder written here loads with `peft.PeftModel.from_pretrained(<transformers model>, folder)`, and one
PEFT wrote loads here; `AdapterSettings` holds what lmforge reads of the config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path
from lmforge.hub.hf import load_torch_file, read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
PREFIX_ENCODER = "prefix_encoder.safetensors"  # prefix_projection's embedding and MLP, to resume training them
KEY_PREFIX = "base_model.model."
PROMPT_KEY = "prompt_embeddings"
METHODS = {"LORA": "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}
PROMPT_INITS = {"random": "RANDOM", "text": "TEXT", "sample_vocab": "SAMPLE_VOCAB"}


@dataclass
class AdapterSettings:
    """An adapter as its adapter_config.json describes it (PEFT's names for the fields)."""

    method: str  # lora | prefix | prompt
    base_model_name_or_path: str | None = None
    # LoRA
    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None  # None: the family's PEFT default
    bias: str = "none"  # none | all | lora_only
    use_rslora: bool = False
    init_lora_weights: bool | str = True  # True: A Kaiming-uniform, B zero; "gaussian": A N(0, 1/r)
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    # prefix and prompt tuning
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    prompt_tuning_init: str = "random"  # random | text | sample_vocab
    prompt_tuning_init_text: str | None = None

    def check(self) -> None:
        if self.method not in ("lora", "prefix", "prompt"):
            raise LmforgeError(f"adapter method {self.method!r} is not one of lora, prefix, prompt")
        if self.method == "lora":
            if self.r < 1 or any(r < 1 for r in self.rank_pattern.values()):
                raise LmforgeError(f"LoRA rank r must be at least 1, not {self.r}")
            if self.bias not in ("none", "all", "lora_only"):
                raise LmforgeError(f"LoRA bias must be none, all or lora_only, not {self.bias!r}")
            if not 0 <= self.lora_dropout < 1:
                raise LmforgeError(f"LoRA dropout must be in [0, 1), not {self.lora_dropout}")
            if self.init_lora_weights not in (True, "gaussian"):
                raise LmforgeError(f"LoRA init must be default (PEFT's: A Kaiming-uniform, B zero) or gaussian, "
                                   f"not {self.init_lora_weights!r}")
        else:
            if self.num_virtual_tokens < 1:
                raise LmforgeError(f"num_virtual_tokens must be at least 1, not {self.num_virtual_tokens}")
            if self.prompt_tuning_init not in PROMPT_INITS:
                raise LmforgeError(f"the virtual tokens' init must be one of {', '.join(PROMPT_INITS)}, "
                                   f"not {self.prompt_tuning_init!r}")
            if self.prompt_tuning_init == "text" and not self.prompt_tuning_init_text:
                raise LmforgeError("init text needs the text (init_text)")
            if self.method == "prefix" and self.prompt_tuning_init == "sample_vocab":
                raise LmforgeError("prefix tuning starts random or from a text, not from sampled tokens")


def peft_config(settings: AdapterSettings, model, dims: dict) -> dict:
    """adapter_config.json for `settings` on `model`; `dims` are the prompt-learning sizes (token_dim, ...)."""
    task = "SEQ_2_SEQ_LM" if model.is_encoder_decoder else "CAUSAL_LM"
    common = {"base_model_name_or_path": settings.base_model_name_or_path, "revision": None, "task_type": task,
              "inference_mode": True}
    if settings.method == "lora":
        targets = settings.target_modules
        return {"peft_type": "LORA", **common, "r": settings.r, "lora_alpha": settings.lora_alpha,
                "lora_dropout": settings.lora_dropout, "target_modules": targets, "bias": settings.bias,
                "use_rslora": settings.use_rslora, "init_lora_weights": settings.init_lora_weights,
                "fan_in_fan_out": model.config.family == "gpt2", "modules_to_save": None,
                "rank_pattern": settings.rank_pattern, "alpha_pattern": settings.alpha_pattern, "use_dora": False,
                "layers_to_transform": None, "layers_pattern": None}
    out = {"peft_type": "PREFIX_TUNING" if settings.method == "prefix" else "PROMPT_TUNING", **common,
           "num_virtual_tokens": settings.num_virtual_tokens, **dims}
    if settings.method == "prefix":
        out.update(prefix_projection=settings.prefix_projection,
                   encoder_hidden_size=settings.encoder_hidden_size or dims["token_dim"], init_weights=None)
    else:
        text = settings.prompt_tuning_init == "text"
        out.update(prompt_tuning_init=PROMPT_INITS[settings.prompt_tuning_init],
                   prompt_tuning_init_text=settings.prompt_tuning_init_text if text else None,
                   tokenizer_name_or_path=settings.base_model_name_or_path if text else None, tokenizer_kwargs=None)
    return out


def settings_from_config(config: dict, path: Path) -> AdapterSettings:
    """What lmforge needs of a PEFT adapter_config.json; a PEFT option it does not implement is an error."""
    kind = config.get("peft_type")
    if kind not in METHODS:
        raise LmforgeError(f"{path}: peft_type {kind!r} is not supported; lmforge reads {', '.join(METHODS)}")
    method = METHODS[kind]
    settings = AdapterSettings(method, base_model_name_or_path=config.get("base_model_name_or_path"))
    if method == "lora":
        for option, off in (("use_dora", False), ("modules_to_save", None), ("layers_to_transform", None),
                            ("layer_replication", None), ("target_parameters", None), ("trainable_token_indices", None),
                            ("lora_bias", False), ("alora_invocation_tokens", None)):
            if config.get(option, off) not in (off, None, [], {}):
                raise LmforgeError(f"{path}: {option}={config[option]!r} is not supported (lmforge reads plain LoRA)")
        init = config.get("init_lora_weights", True)
        for name in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "rank_pattern",
                     "alpha_pattern"):
            if config.get(name) is not None:
                setattr(settings, name, config[name])
        settings.init_lora_weights = "gaussian" if init == "gaussian" else True
    else:
        settings.num_virtual_tokens = config.get("num_virtual_tokens") or 0
        settings.prefix_projection = bool(config.get("prefix_projection", False))
        settings.encoder_hidden_size = config.get("encoder_hidden_size")
        inits = {v: k for k, v in PROMPT_INITS.items()}
        settings.prompt_tuning_init = inits.get(config.get("prompt_tuning_init") or "RANDOM", "random")
        settings.prompt_tuning_init_text = config.get("prompt_tuning_init_text")
        if settings.prompt_tuning_init == "text" and not settings.prompt_tuning_init_text:
            settings.prompt_tuning_init = "random"
    settings.check()
    return settings


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def read_folder(folder: str | os.PathLike) -> tuple[AdapterSettings, dict[str, torch.Tensor]]:
    """The settings and the tensors (keys without PEFT's `base_model.model.` prefix) of an adapter folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LmforgeError(f"adapter folder {folder} does not exist")
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise LmforgeError(f"{folder} has no {ADAPTER_CONFIG}, so it is not an adapter folder (PEFT's format)")
    config = read_json(path)
    if not isinstance(config, dict):
        raise LmforgeError(f"{path} should hold a JSON object (PEFT's adapter config)")
    settings = settings_from_config(config, path)
    weights = next((folder / name for name in (ADAPTER_WEIGHTS, ADAPTER_BIN) if (folder / name).is_file()), None)
    if weights is None:
        raise LmforgeError(f"{folder} has no {ADAPTER_WEIGHTS} (nor {ADAPTER_BIN}); the adapter's weights are missing")
    if weights.name != ADAPTER_WEIGHTS:
        tensors = load_torch_file(weights)
    else:
        try:
            tensors = load_file(weights)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise LmforgeError(f"{weights} is corrupt or truncated ({exc}); save the adapter again") from None
    return settings, {key.removeprefix(KEY_PREFIX): value for key, value in tensors.items()}


def write_folder(folder: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor],
                 extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write adapter_config.json and adapter_model.safetensors (keys get PEFT's `base_model.model.` prefix, but
    `prompt_embeddings`), atomically; `extra` tensors go to a file of their own beside them."""
    folder = Path(folder)
    with atomic_path(folder, is_dir=True) as tmp:
        write_into(tmp, config, tensors, extra)
    return folder


def write_into(folder: Path, config: dict, tensors: dict[str, torch.Tensor],
               extra: dict[str, torch.Tensor] | None = None) -> None:
    """`write_folder` into an existing folder (a checkpoint being written)."""
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    out = {(key if key == PROMPT_KEY else KEY_PREFIX + key): value.detach().contiguous().cpu()
           for key, value in tensors.items()}
    save_file(out, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    if extra:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, folder / PREFIX_ENCODER,
                  metadata={"format": "pt"})

