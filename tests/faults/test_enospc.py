"""A full disk (ENOSPC, injected in-process) at any write of a run: the run ends in one sentence with exit status
2, the previous checkpoint is intact, nothing half-written is left, and --resume then ends bit for bit as the
uninterrupted run.

Injection points: inside the second save of last/ (model.safetensors as safetensors reports it, optimizer.pt,
training_state.pt, the flush before the swap) and of best/, the metrics and the training log (appends), the
run's config.yaml and loss.png."""

from __future__ import annotations

import errno
import json

import pytest
from fault_models import assert_same_run, cli_args, one_thread, train_settings
from safetensors import SafetensorError

from lmforge.cli.main import main
from lmforge.hub import hf
from lmforge.train import checkpoint, report, train

SAFETENSORS_ENOSPC = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                      'on device" })')
# point -> the iteration of last/ it leaves (None: no checkpoint yet)
POINTS = {"last/model.safetensors:2": 4, "last/optimizer:2": 4, "last/training_state:2": 4, "last/written:2": 4,
          "best/weights:2": 4, "best/written:1": None, "metrics:2": None, "log:6": 4, "config:1": None,
          "plot:1": 8}
DEFAULT = {"last/model.safetensors:2", "last/training_state:2", "log:6"}


def full_disk():
    return OSError(errno.ENOSPC, "No space left on device")


def inject(monkeypatch, point: str) -> None:
    """Make the write at `point` fail with ENOSPC."""
    name, _, nth = point.partition(":")
    count = {"n": 0}

    def due() -> bool:
        count["n"] += 1
        return count["n"] == int(nth)

    if name == "last/model.safetensors":
        real = hf.save_file

        def save_file(tensors, path, *args, **kwargs):
            if ".last." in str(path) and due():
                raise SafetensorError(SAFETENSORS_ENOSPC)
            return real(tensors, path, *args, **kwargs)

        monkeypatch.setattr(hf, "save_file", save_file)
    elif "/" in name:
        real_stage = checkpoint.stage_reached

        def stage_reached(where: str) -> None:
            if where == name and due():
                raise full_disk()
            real_stage(where)

        monkeypatch.setattr(checkpoint, "stage_reached", stage_reached)
    elif name in ("metrics", "log"):
        real_append = report.RunFiles.append

        def append(self, file: str, record: dict) -> None:
            if file.startswith(name) and due():
                with open(self.run_dir / file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record)[:7])  # a torn line, as a full disk leaves it
                raise full_disk()
            real_append(self, file, record)

        monkeypatch.setattr(report.RunFiles, "append", append)
    elif name == "config":
        import lmforge.train.loop as loop

        def write_text_atomic(path, text):
            raise full_disk()

        monkeypatch.setattr(loop, "write_text_atomic", write_text_atomic)
    elif name == "plot":
        real_plot = report.RunFiles.plot

        def plot(self):
            if due():
                from lmforge.fsutil import atomic_path

                with atomic_path(self.run_dir / report.PLOT) as tmp:
                    tmp.write_bytes(b"\x89PNG")
                    raise full_disk()
            real_plot(self)

        monkeypatch.setattr(report.RunFiles, "plot", plot)


@pytest.mark.parametrize("point", [pytest.param(p, marks=() if p in DEFAULT else pytest.mark.slow) for p in POINTS])
def test_a_full_disk_keeps_the_previous_checkpoint_and_ends_in_a_sentence(tmp_path, prepared, reference, point,
                                                                           monkeypatch, capsys):
    run = tmp_path / "run"
    settings = train_settings(run, prepared)
    with monkeypatch.context() as patch, one_thread():
        inject(patch, point)
        assert main(["train", *cli_args(settings), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk is full" in err and "Traceback" not in err, err
    expected = POINTS[point]
    if expected is None:
        assert not (run / "last").exists()
    else:
        assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == expected
        checkpoint.load_resumable(run / "last", checkpoint.torch.device("cpu"))
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")] if run.exists() else True

    with one_thread():
        result = train(settings, resume=expected is not None and expected < 8, quiet=True) if expected != 8 else None
    assert result is None or result.iters == 8
    assert_same_run(reference, run)
