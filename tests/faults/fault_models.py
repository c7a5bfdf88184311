"""Tiny model folders and small corpora for the fault tests, built locally in a fraction of a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def start_paused(settings: dict, point: str, marker: Path, resume: bool = False,
                 timeout: float = 180) -> subprocess.Popen:
    """`lmforge.train.train(settings)` in a child process that stops inside a save at `point` ("last/optimizer:2",
    see train/checkpoint.py) and sleeps there; returns once it is there."""
    env = {**os.environ, "LMFORGE_TEST_PAUSE_IN_SAVE": point, "LMFORGE_TEST_PAUSE_FILE": str(marker),
           "OMP_NUM_THREADS": "1"}
    code = f"from lmforge.train import train\ntrain({settings!r}, resume={resume!r}, quiet=True)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before reaching {point}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach {point} in {timeout:g} s")
        time.sleep(0.05)
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL
    proc.wait(timeout=30)
    proc.stderr.close()
