"""Synthetic preference data and tiny configs shared by the alignment tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = "abcdefgh"


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompts "say X:" whose chosen response repeats the letter X and whose rejected one repeats another letter:
    the preference depends on prompt and response together."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good, bad = rng.sample(LETTERS, 2)
        length = rng.randint(2, 6)
        rows.append({"prompt": f"say {good}:", "chosen": " " + good * length,
                     "rejected": " " + bad * rng.randint(2, 6)})
    return rows


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def tiny_reward_settings(out_dir: Path, train: Path, val: Path, **overrides) -> dict:
    base = {"out_dir": str(out_dir), "data.train": str(train), "data.val": str(val), "data.vocab_size": 300,
            "model.preset": "tiny-gpt2", "model.d_model": 32, "model.n_head": 2, "model.n_layer": 1,
            "max_length": 24, "max_response_length": 10, "batch_size": 16, "max_iters": 60, "eval_interval": 30,
            "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 5, "log_interval": 10, "device": "cpu"}
    return {**base, **overrides}
