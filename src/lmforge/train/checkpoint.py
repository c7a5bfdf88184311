"""Checkpoints: a Hugging Face model folder (weights, config, tokenizer) with the training state beside it.

    model folder (config.json, model.safetensors, tokenizer.json, generation_config.json), or for a run that
                         trains an adapter, the adapter folder (adapter_config.json, adapter_model.safetensors:
                         PEFT's format) with the tokenizer and generation config
    trainer_state.json   iteration, best metric, elapsed time, the run's config
    optimizer.pt         AdamW state (moments, step counts)
    training_state.pt    RNG states of every rank, the task's data position, the gradient scaler

Each checkpoint is written under a temporary name, flushed to disk and swapped into place, so a crash or a full
disk leaves the previous one intact (tests/faults/ kills runs at every stage of a save to prove it). Everything
loads with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from lmforge.adapt.training import save_weights
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path, disk_full
from lmforge.hub.hf import load_torch_file

TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
TRAINING_STATE = "training_state.pt"
# Test-only: LMFORGE_TEST_PAUSE_IN_SAVE="last/optimizer:2" makes the second save of last/ stop once optimizer.pt
# is written, write the file named by LMFORGE_TEST_PAUSE_FILE and sleep, for a test to SIGKILL the run there.
PAUSE_ENV, PAUSE_FILE_ENV = "LMFORGE_TEST_PAUSE_IN_SAVE", "LMFORGE_TEST_PAUSE_FILE"
STAGES = ("weights", "optimizer", "training_state", "written", "moved_aside", "published")
_reached: dict[str, int] = {}


def stage_reached(point: str) -> None:
    """A stage of a save ("last/optimizer"): where the test-only pause hook may stop it."""
    _reached[point] = _reached.get(point, 0) + 1
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name == point and _reached[point] == int(nth or 1):
        marker = os.environ.get(PAUSE_FILE_ENV)
        if marker:
            Path(marker).write_text(point, encoding="utf-8")
        while True:
            time.sleep(60)


def save_checkpoint(folder: Path, model: torch.nn.Module, tokenizer, trainer_state: dict,
                    generation_config: dict | None = None, optimizer_state: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Write the model (or adapter) folder and, for a resumable checkpoint, the optimizer and training state,
    atomically."""
    def stage(name: str) -> None:
        stage_reached(f"{folder.name}/{name}")

    try:
        with atomic_path(folder, is_dir=True, on_stage=stage) as tmp:
            save_weights(model, tmp, tokenizer=tokenizer, generation_config=generation_config)
            stage("weights")
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / OPTIMIZER)
                stage("optimizer")
            if training_state is not None:
                torch.save(training_state, tmp / TRAINING_STATE)
                stage("training_state")
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")
    except Exception as exc:
        if disk_full(exc):
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
        out.append(load_torch_file(path, map_location=device if name == OPTIMIZER else "cpu",
                                   fix="lmforge never writes such a file, so start a new run"))
    return out[0], out[1]
