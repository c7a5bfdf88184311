"""Prepared token files on disk (memory-mapped) and the random-window batches a language model trains on.

A prepared folder holds `train.bin` and `val.bin` (flat token ids, uint16 when the vocabulary fits,
else uint32), the tokenizer (`tokenizer.json`) and `manifest.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_prepared(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


@dataclass
class TokenData:
    """The splits of a prepared folder as read-only memory maps, with its tokenizer and manifest."""

    folder: Path
    manifest: dict
    train: np.ndarray
    val: np.ndarray
    tokenizer: object

    @classmethod
    def open(cls, folder: str | Path) -> TokenData:
        from lmforge.tokenizer import Tokenizer

        folder = Path(folder)
        if not is_prepared(folder):
            raise LmforgeError(f"{folder} is not a prepared corpus (no {MANIFEST}); run `lmforge prepare` first")
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LmforgeError(f"{folder / MANIFEST} is not valid JSON ({exc}); prepare the corpus again") from None
        dtype = np.dtype(manifest["dtype"])
        splits = {}
        for split in SPLITS:
            path = folder / f"{split}.bin"
            expected = manifest["tokens"][split]
            if not path.is_file() or path.stat().st_size != expected * dtype.itemsize:
                raise LmforgeError(f"{path} is missing or does not hold the {expected} tokens its manifest "
                                   "lists; prepare the corpus again")
            splits[split] = (np.memmap(path, dtype=dtype, mode="r") if expected
                             else np.zeros(0, dtype=dtype))
        return cls(folder, manifest, splits["train"], splits["val"], Tokenizer.from_pretrained(folder))

    def split(self, name: str) -> np.ndarray:
        return self.train if name == "train" else self.val


class WindowSampler:
    """Random windows of `block_size + 1` tokens from one split, drawn by a seeded generator.

    Every process draws the same global batch of `batch_size * world_size` windows and keeps its own
    rows, so data is sharded per rank and the global batch does not depend on the number of processes.
    The generator state is the data position: saving and restoring it resumes the exact sequence.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.block_size
        starts = torch.randint(high, (self.batch_size * self.world_size,), generator=self.generator)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist()
        rows = np.stack([self.tokens[s:s + self.block_size + 1] for s in mine]).astype(np.int64)
        batch = torch.from_numpy(rows)
        if torch.device(device).type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
