"""Adapters: LoRA, prefix tuning and prompt tuning, in PEFT's folder format both ways.

    ckpt = lmforge.load("gpt2", adapter="runs/gpt2-lora/best")   # or, on a loaded model:
    ckpt.add_adapter("sql", "adapters/sql"); ckpt.set_adapter("sql")
    with ckpt.disable_adapter(): ...
    ckpt.merge_adapter(); lmforge.save(ckpt.model, "merged")      # LoRA folded into a plain model folder

Modules: lora.py (the LoRA wrapper), prefix.py (virtual tokens), peft_format.py (the folder), names.py
(Hugging Face module names to lmforge layers), adapters.py (what a model holds), config.py (the training
section `adapter.*`), training.py (what the training loop needs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmforge.adapt.adapters import (
    active_adapter,
    adapter_names,
    add_adapter,
    disable_adapter,
    merge_adapter,
    remove_adapter,
    save_adapter,
    set_adapter,
)
from lmforge.adapt.peft_format import AdapterSettings, is_adapter_folder
from lmforge.hub.hf import Checkpoint


@dataclasses.dataclass
class AdaptableCheckpoint(Checkpoint):
    """A loaded model (`lmforge.load`) that takes adapters: add, switch, disable, remove, merge, save."""

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> AdaptableCheckpoint:
        return cls(**{f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)})

    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Add the PEFT adapter in `folder` under `name` (active if no other one is)."""
        add_adapter(self.model, name, folder)

    def set_adapter(self, name: str) -> None:
        set_adapter(self.model, name)

    def disable_adapter(self):
        """A context in which the base model runs without its adapter."""
        return disable_adapter(self.model)

    def remove_adapter(self, name: str) -> None:
        remove_adapter(self.model, name)

    def merge_adapter(self, name: str | None = None) -> None:
        """Fold a LoRA adapter (default: the active one) into the weights."""
        merge_adapter(self.model, name)

    def save_adapter(self, folder: str | Path, name: str | None = None) -> Path:
        return save_adapter(self.model, folder, name)

    @property
    def active_adapter(self) -> str | None:
        return active_adapter(self.model)

    @property
    def adapters(self) -> list[str]:
        return adapter_names(self.model)


__all__ = ["AdaptableCheckpoint", "AdapterSettings", "active_adapter", "adapter_names", "add_adapter",
           "disable_adapter", "is_adapter_folder", "merge_adapter", "remove_adapter", "save_adapter", "set_adapter"]
