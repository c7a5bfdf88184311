"""Crash safety of checkpoints: training is SIGKILLed at many points, inside the writing of a checkpoint too
(the test-only pause hook of train/checkpoint.py stops a save at a stage, then the process is killed there).
Afterwards the run folder holds a loadable last/ (and best/) or, before the first checkpoint, no run at all, and
`--resume` ends bit for bit where the uninterrupted run ends.

Run by SIGKILL at a step: steps 2 (before any checkpoint), 5 and 7. Inside a save, at every stage of both saves
of best/ (at steps 4 and 8) and of last/ (4 and 8): weights written, optimizer.pt written, training_state.pt
written, everything written and flushed, the new folder swapped into place (the old one not yet removed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fault_models import assert_same_run, kill, one_thread, run_child, start_paused, train_settings

import lmforge
from lmforge.fsutil import recover_folder
from lmforge.train import train
from lmforge.train.checkpoint import load_resumable

LAST_STAGES = ("weights", "optimizer", "training_state", "written", "published")
BEST_STAGES = ("weights", "written", "published")
# moved_aside (the second save of a folder, the first to replace one): where a system without an atomic exchange of
# folders has moved the old one aside (the previous checkpoint is then only in .last.old until the resume puts it
# back)
SAVE_POINTS = [f"last/{s}:{n}" for n in (1, 2) for s in LAST_STAGES] + \
              [f"best/{s}:{n}" for n in (1, 2) for s in BEST_STAGES] + ["last/moved_aside:1", "best/moved_aside:1"]
STEP_POINTS = ["step:2", "step:5", "step:7"]
DEFAULT = {"last/optimizer:2", "last/published:2", "last/moved_aside:1", "step:5"}  # the rest run under -m slow
POINTS = [pytest.param(p, marks=() if p in DEFAULT else pytest.mark.slow) for p in SAVE_POINTS + STEP_POINTS]


def iter_of(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["iter"]


def expected_last(point: str) -> int | None:
    """The iteration of the last/ checkpoint a kill at `point` leaves (None: no checkpoint yet)."""
    where, _, nth = point.partition(":")
    folder, _, stage = where.partition("/")
    if folder == "step":
        return None if int(nth) < 4 else 4
    save = int(nth) + (stage == "moved_aside")  # the first save replaces nothing, so moves nothing aside
    done = save - (0 if folder == "last" and stage == "published" else 1)  # saves of last/ complete
    if folder == "best":  # best/ is saved just before last/ at the same evaluation
        done = save - 1
    return [None, 4, 8][done]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_anywhere_leaves_a_loadable_checkpoint_and_resume_is_bitwise(tmp_path, prepared, reference, point):
    run = tmp_path / "run"
    settings = train_settings(run, prepared)
    if point.startswith("step:"):
        run_child(settings, kill_at_step=int(point.split(":")[1]))
    else:
        proc = start_paused(settings, point, tmp_path / "paused", exchange="moved_aside" not in point)
        kill(proc)

    if "moved_aside" in point:  # the previous version waits in .NAME.old for the resume to put it back
        folder = point.split("/")[0]
        assert not (run / folder).exists() and (run / f".{folder}.old").is_dir()
        recover_folder(run / folder)
    for name in ("last", "best"):  # what a user finds right after the crash
        if (run / name).exists():
            assert lmforge.load(run / name).model is not None
    expected = expected_last(point)
    assert iter_of(run / "last") == expected if expected else not (run / "last").exists()
    if expected:
        load_resumable(run / "last", torch.device("cpu"))
        assert (run / "best").exists()

    with one_thread():
        result = train(settings, resume=expected is not None, quiet=True)
    assert result.iters == 8
    assert_same_run(reference, run)
