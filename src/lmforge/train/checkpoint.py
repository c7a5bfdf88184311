"""Checkpoints: a Hugging Face model folder (weights, config, tokenizer) with the training state beside it.

    model folder (config.json, model.safetensors, tokenizer.json, generation_config.json), or for a run that
                         trains an adapter, the adapter folder (adapter_config.json, adapter_model.safetensors:
                         PEFT's format) with the tokenizer and generation config
    trainer_state.json   iteration, best metric, elapsed time, the run's config
    optimizer.pt         AdamW state (moments, step counts)
    training_state.pt    RNG states of every rank, the task's data position, the gradient scaler

Each checkpoint is written under a temporary name and renamed into place, so a crash or a full disk
leaves the previous one intact. Everything loads with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import torch

from lmforge.adapt.training import save_weights
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path

TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
TRAINING_STATE = "training_state.pt"


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__
    return False


def save_checkpoint(folder: Path, model: torch.nn.Module, tokenizer, trainer_state: dict,
                    generation_config: dict | None = None, optimizer_state: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Write the model (or adapter) folder and, for a resumable checkpoint, the optimizer and training state,
    atomically."""
    try:
        with atomic_path(folder, is_dir=True) as tmp:
            save_weights(model, tmp, tokenizer=tokenizer, generation_config=generation_config)
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / OPTIMIZER)
            if training_state is not None:
                torch.save(training_state, tmp / TRAINING_STATE)
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")
    except (LmforgeError, OSError) as exc:
        if _disk_full(exc):
            raise LmforgeError(f"the disk is full while writing the checkpoint {folder}; free some space and "
                               "resume with --resume (the previous checkpoint is intact)") from None
        raise
    return folder


def read_trainer_state(folder: Path) -> dict:
    path = folder / TRAINER_STATE
    if not path.is_file():
        raise LmforgeError(f"{folder} holds no resumable checkpoint ({TRAINER_STATE} is missing); "
                           "train without --resume to start a new run")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from None


def load_resumable(folder: Path, device: torch.device) -> tuple[dict, dict]:
    """The optimizer state and the training state of a checkpoint saved with both."""
    out = []
    for name in (OPTIMIZER, TRAINING_STATE):
        path = folder / name
        if not path.is_file():
            raise LmforgeError(f"{folder} has no {name}, so the run cannot be resumed exactly; "
                               "fine-tune from it with init_from instead")
        try:
            out.append(torch.load(path, map_location=device if name == OPTIMIZER else "cpu", weights_only=True))
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            raise LmforgeError(f"{path} could not be read ({exc}); the checkpoint is corrupt") from None
    return out[0], out[1]
