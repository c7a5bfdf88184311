"""Small corpora and configs shared by the training tests."""

import random
import signal
import subprocess
import sys

WORDS = [
    "the", "king", "and", "queen", "of", "shakespeare", "speak", "to", "thee", "my", "lord", "what",
    "say", "you", "now", "good", "night", "sweet", "prince", "to", "be", "or", "not", "that", "is",
    "question", "whether", "tis", "nobler", "in", "mind", "suffer"
]


def make_text(n_lines: int = 600, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + ".")
        if rng.random() < 0.2:
            lines.append("")
    return "\n".join(lines) + "\n"


def tiny(out_dir, source, **overrides) -> dict:
    """A config small enough to train in a second or two on a shared 2-core CPU."""
    base = {"out_dir": str(out_dir), "data.source": str(source), "model.n_layer": 1, "model.n_head": 2,
            "model.n_embd": 32, "model.block_size": 16, "batch_size": 4, "max_iters": 8, "eval_interval": 4,
            "eval_iters": 2, "warmup_iters": 2, "log_interval": 2, "sample_tokens": 8, "device": "cpu"}
    return {**base, **overrides}


def killed_at_step(verb: str, settings: dict, step: int) -> None:
    """Run `lmforge.train.<verb>(settings)` in a child process that SIGKILLs itself when step `step` is logged."""
    child = (
        "import os, signal\n"
        f"from lmforge.train import {verb}\n"
        "def kill(event):\n"
        f"    if event['event'] == 'step' and event['iter'] == {step}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"{verb}({settings!r}, quiet=True, callback=kill)\n")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
