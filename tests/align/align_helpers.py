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


def tiny_policy(folder: Path, kind: str = "gpt2", seed: int = 0) -> Path:
    """A random tiny policy with a character tokenizer over the synthetic pairs' alphabet, saved as a folder."""
    import torch

    from lmforge.hub.hf import save_folder
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.pairs import FinetuneConfig, PairDataConfig, PairModelConfig, build_model

    tok = Tokenizer.train_char([LETTERS + "say: "], special_tokens=("<pad>", "</s>", "<s>"))
    preset = {"gpt2": "tiny-gpt2", "t5": "tiny-t5", "llama": "tiny-llama"}[kind]
    shim = FinetuneConfig(model=PairModelConfig(preset=preset, d_model=32, n_head=2, n_layer=1, dropout=0.0),
                          data=PairDataConfig(max_source_length=32, max_target_length=16))
    torch.manual_seed(seed)
    save_folder(build_model(shim, tok), folder, tokenizer=tok)
    return folder


def tiny_dpo_settings(out_dir: Path, policy: Path, train: Path, val: Path, **overrides) -> dict:
    base = {"out_dir": str(out_dir), "init_from": str(policy), "data.train": str(train), "data.val": str(val),
            "max_length": 24, "max_response_length": 10, "batch_size": 16, "max_iters": 40, "eval_interval": 20,
            "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 2, "log_interval": 10, "device": "cpu",
            "beta": 0.5}
    return {**base, **overrides}
