import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import killed_at_step, tiny

import lmforge
from lmforge.errors import LmforgeError
from lmforge.train import checkpoint as checkpoint_mod
from lmforge.train import train


def settings(out_dir, prepared, **extra):
    # dropout on, so the restored RNG state matters; two threads in every process, so float sums match
    return tiny(out_dir, prepared, **{"max_iters": 10, "model.dropout": 0.1, "threads": 2, **extra})


def weights(folder: Path) -> dict:
    return lmforge.load(folder).model.state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prepared):
    """An uninterrupted run that the resumed ones must match bit for bit."""
    return train(settings(tmp_path_factory.mktemp("ref") / "run", prepared), quiet=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, prepared, reference):
    run = tmp_path / "run"
    killed_at_step("train", settings(run, prepared), 6)
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 4
    result = train(settings(run, prepared), resume=True, quiet=True)
    timings = ("tokens_per_sec", "elapsed_s", "eval_s")
    assert result.iters == 10 and result.last_eval == {**reference.last_eval, **{k: result.last_eval[k] for k in timings}}
    assert_same_weights(reference.last_dir, run / "last")
    metrics = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [0, 4, 8, 10]


def test_sigint_saves_then_resume_is_bitwise_identical(tmp_path, prepared, reference):
    run = tmp_path / "run"

    def interrupt(event):
        if event["event"] == "step" and event["iter"] == 6:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(settings(run, prepared), quiet=True, callback=interrupt)
    assert first.stopped == "interrupted" and first.iters == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 6
    # the run folder alone (its config.yaml) is enough to resume
    assert train(run, resume=True, quiet=True).iters == 10
    assert_same_weights(reference.last_dir, run / "last")


def test_cli_sigint_exits_cleanly_with_a_checkpoint(tmp_path, prepared):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmforge.cli.main", "train", "--out_dir", str(run), "--data.source", str(prepared),
           "--model.n_layer", "1", "--model.n_embd", "16", "--model.n_head", "2", "--model.block_size", "8",
           "--max_iters", "100000", "--eval_interval", "5", "--eval_iters", "1", "--sample_tokens", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "last" / "trainer_state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at iter" in out and "--resume" in out and "Traceback" not in err
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["stopped"] == "interrupted" and state["iter"] >= 5


def test_resume_refuses_another_config_or_a_missing_run(tmp_path, prepared, reference):
    with pytest.raises(LmforgeError, match=r"different config \(model.n_embd is 32 there and 48 here\)"):
        train(settings(reference.run_dir, prepared, **{"model.n_embd": 48}), resume=True)
    with pytest.raises(LmforgeError, match="no run to resume"):
        train(settings(tmp_path / "empty", prepared), resume=True)
    longer = train(settings(reference.run_dir, prepared, max_iters=12), resume=True, quiet=True)
    assert longer.iters == 12  # max_iters may grow on resume; the schedule is fixed by lr_decay_iters


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, prepared, monkeypatch):
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # optimizer.pt of the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "save", failing_save)
    message = r"disk is full while writing the checkpoint .*last.*previous checkpoint is intact"
    with pytest.raises(LmforgeError, match=message):
        train(settings(run, prepared, sample_tokens=0), quiet=True)
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 4
    assert lmforge.load(run / "last").model is not None
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
