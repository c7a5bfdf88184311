"""One run folder, one writer: a second process on a run folder in use is refused with a sentence; the lock of a
process that died (even by SIGKILL) is taken over."""

from __future__ import annotations

import errno
import fcntl
import json
import subprocess
import sys

import pytest
from fault_models import cli_args, kill, start_paused, train_settings

from lmforge.cli.main import main
from lmforge.errors import LmforgeError
from lmforge.fsutil import LOCK, folder_lock


def test_a_second_process_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, prepared, capsys):
    run = tmp_path / "run"
    settings = train_settings(run, prepared)
    first = start_paused(settings, "last/optimizer:2", tmp_path / "paused")  # holds the folder, mid-save
    try:
        for extra in (["--resume"], [], ["--max_iters=12", "--resume"]):
            assert main(["train", *cli_args(settings), "--quiet", *extra]) == 2
            err = capsys.readouterr().err
            assert err == (f"lmforge train: error: {run} is in use by another lmforge process (process id "
                           f"{first.pid}); wait for it to finish or stop it, or choose another out_dir\n")
        assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 4  # untouched
    finally:
        kill(first)
    assert (run / LOCK).read_text().strip() == str(first.pid)  # the file stays, but its lock died with the process
    assert main(["train", *cli_args(settings), "--quiet", "--resume"]) == 0
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 8
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # the lock, the half-written save: gone


def test_a_refused_new_run_leaves_no_folder_behind(tmp_path):
    run = tmp_path / "run"
    with folder_lock(run):
        holder = subprocess.run([sys.executable, "-c", "from lmforge.fsutil import folder_lock\n"
                                 f"with folder_lock({str(run)!r}): pass"], capture_output=True, text=True)
        assert holder.returncode == 1 and "is in use by another lmforge process" in holder.stderr
    assert not run.exists()  # created for the lock, empty, removed when released


@pytest.mark.parametrize("holder_alive", [True, False])
def test_without_kernel_locks_the_process_id_decides(tmp_path, monkeypatch, holder_alive):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) if holder_alive else None
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(f"{holder.pid if holder else int(dead.stdout)}\n")
    try:
        if holder_alive:
            with pytest.raises(LmforgeError, match=f"in use by another lmforge process \\(process id {holder.pid}\\)"):
                with folder_lock(run):
                    pass
        else:
            with folder_lock(run):
                assert (run / LOCK).read_text().strip() != dead.stdout.strip()  # a stale lock is taken over
    finally:
        if holder:
            holder.kill()
            holder.wait()
