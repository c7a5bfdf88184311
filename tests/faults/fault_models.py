"""Tiny model folders and small corpora for the fault tests, built locally in a fraction of a second."""

from __future__ import annotations

import json
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
