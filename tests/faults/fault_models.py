"""Tiny model folders and small corpora for the fault tests, built locally in a fraction of a second."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import torch

from lmforge.config import preset
from lmforge.hub.hf import save_folder
from lmforge.models.decoder import DecoderLM
from lmforge.tokenizer import Tokenizer

TEXT = "the king and the queen speak to thee, my lord. what say you now? good night, sweet prince.\n" * 4


def tiny_model_folder(folder: Path, seed: int = 0, **overrides) -> Path:
    """A random 2-layer GPT-2 with a character tokenizer, saved as a Hugging Face folder."""
    tokenizer = Tokenizer.train_char([TEXT], special_tokens=["<|endoftext|>"])
    torch.manual_seed(seed)
    settings = dict(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size,
                    bos_token_id=tokenizer.vocab_size - 1, eos_token_id=tokenizer.vocab_size - 1)
    model = DecoderLM(preset("tiny-gpt2", **{**settings, **overrides})).eval()
    return save_folder(model, folder, tokenizer=tokenizer)


def pair_file(path: Path, n: int = 24) -> Path:
    words = ("cat", "dog", "bird", "fox")
    rows = [{"text": f"the {words[i % 4]} sat on the mat {i}", "summary": words[i % 4]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_settings(out_dir, prepared, **overrides) -> dict:
    """A language-modelling run small enough for a second or two: checkpoints at steps 4 and 8 (best/ and last/),
    dropout on so that a resume must restore the random state to match bit for bit."""
    base = {"out_dir": str(out_dir), "data.source": str(prepared), "model.n_layer": 1, "model.n_head": 2,
            "model.n_embd": 16, "model.block_size": 16, "model.dropout": 0.1, "batch_size": 4, "max_iters": 8,
            "eval_interval": 4, "eval_iters": 2, "warmup_iters": 2, "log_interval": 1, "sample_tokens": 0,
            "device": "cpu", "threads": 1}
    return {**base, **overrides}


def cli_args(settings: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in settings.items()]


def processes():
    """A forkserver that has imported lmforge.train once: a child starts in a fraction of a second instead of
    importing torch again (seconds on a loaded machine)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lmforge.train", "fault_models"])
    return context


def child_train(settings: dict, resume: bool = False, pause_at: str | None = None, marker: str | None = None,
                kill_at_step: int | None = None, exchange: bool = True) -> None:
    """The body of a child run: pause inside a save at `pause_at` (see train/checkpoint.py), or SIGKILL itself
    when step `kill_at_step` is logged; without `exchange`, folders are replaced as on systems without an atomic
    exchange (moved aside, then the new one moved in)."""
    from lmforge import fsutil
    from lmforge.train import train

    if not exchange:
        fsutil._exchange = lambda a, b: False

    if pause_at:
        os.environ.update(LMFORGE_TEST_PAUSE_IN_SAVE=pause_at, LMFORGE_TEST_PAUSE_FILE=marker)

    def callback(event: dict) -> None:
        if event["event"] == "step" and event["iter"] == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    train(settings, resume=resume, quiet=True, callback=callback)


def run_child(settings: dict, kill_at_step: int | None = None, timeout: float = 180) -> None:
    """A run in a child process, killed by SIGKILL when step `kill_at_step` is logged."""
    proc = processes().Process(target=child_train, args=(settings,), kwargs={"kill_at_step": kill_at_step})
    proc.start()
    proc.join(timeout)
    assert proc.exitcode == (-signal.SIGKILL if kill_at_step else 0), f"the child ended with {proc.exitcode}"


def start_paused(settings: dict, point: str, marker: Path, resume: bool = False, timeout: float = 180,
                 exchange: bool = True):
    """A run in a child process that stops inside a save at `point` ("last/optimizer:2") and sleeps there;
    returns once it is there."""
    proc = processes().Process(target=child_train, args=(settings, resume, point, str(marker)),
                               kwargs={"exchange": exchange})
    proc.start()
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if not proc.is_alive():
            raise AssertionError(f"the run ended (status {proc.exitcode}) before reaching {point}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach {point} in {timeout:g} s")
        time.sleep(0.02)
    return proc


def kill(proc) -> None:
    proc.kill()  # SIGKILL
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


@contextlib.contextmanager
def one_thread():
    """As in the children (threads: 1): the same float sums, so the same bits."""
    try:
        yield
    finally:
        torch.set_num_threads(min(2, os.cpu_count() or 1))


def assert_same_run(reference: Path, run: Path) -> None:
    """`run` ended bit for bit as `reference`: its last/ and best/ weights and its metrics, and left nothing
    half-written (no temporary folder, no lock)."""
    import lmforge

    for name in ("last", "best"):
        a, b = lmforge.load(reference / name).model.state_dict(), lmforge.load(run / name).model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{run / name} differs"
    timings = ("tokens_per_sec", "elapsed_s", "eval_s")

    def metrics(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k not in timings} for row in rows]

    assert metrics(run) == metrics(reference)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
