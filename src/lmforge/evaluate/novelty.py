"""How much generated text is copied verbatim from the training corpus.

`NGramIndex` holds the 64-bit hash of every n-gram (default n=8) of a training token stream as a
sorted, de-duplicated uint64 array: 8 bytes per distinct n-gram, built with vectorised numpy in
chunks (so a memory-mapped stream of tens of millions of tokens is never copied whole), queried
with `np.searchsorted`, saved as one .npy file that `load` memory-maps.

Hash: each token id is scrambled with the splitmix64 finaliser, then the n scrambled values are
combined as a polynomial in an odd 64-bit base, modulo 2**64. Treating that hash as random, an
n-gram absent from the corpus is wrongly reported found with probability about
(distinct n-grams in the index) / 2**64, i.e. about 5e-12 for 100 million n-grams. An n-gram that
is present is always found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path

_BASE = np.uint64(0xFF51AFD7ED558CCD)  # odd, so multiplying by it is invertible mod 2**64
_MAGIC = np.uint64(int.from_bytes(b"lmfngr01", "little"))


def _scramble(ids: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise (uint64 arithmetic wraps modulo 2**64)."""
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _combine(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Polynomial hash of n-grams given as n aligned arrays of scrambled ids, first token first."""
    h = np.zeros(len(columns[0]), dtype=np.uint64)
    for column in columns:
        h = h * _BASE + column
    return h


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hashes of all len(ids) - n + 1 contiguous n-grams of a 1-D id array."""
    scrambled = _scramble(ids)
    count = len(ids) - n + 1
    return _combine([scrambled[j:j + count] for j in range(n)])


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for a 1-D array, via np.sort (np.unique took 50x longer on 4M uint64 with numpy 2.4)."""
    values = np.sort(values)
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _as_ids(token_ids: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(token_ids)
    if ids.size == 0:
        return ids.astype(np.int64)
    if not np.issubdtype(ids.dtype, np.integer):
        raise LmforgeError(f"{what} must be integer token ids, got dtype {ids.dtype}; "
                           "tokenize the text first (or use word_ids for words)")
    return ids


def word_ids(text: str, vocab: dict[str, int]) -> list[int]:
    """Whitespace words of `text` as ids from `vocab`, adding unseen words to it with new ids.

    Build the training index and map generated text with the same dict: words the corpus never
    had get fresh ids, so n-grams containing them are (correctly) not found.
    """
    return [vocab.setdefault(word, len(vocab)) for word in text.split()]


class NGramIndex:
    """Set of the n-grams of a token stream, for share-found-verbatim queries."""

    def __init__(self, hashes: np.ndarray, n: int):
        self.hashes = hashes
        self.n = n

    @classmethod
    def build(cls, token_ids: np.ndarray, n: int = 8, chunk_size: int = 1 << 22) -> NGramIndex:
        """Index every n-gram of a 1-D token id array, `chunk_size` n-gram positions at a time."""
        if n < 1:
            raise LmforgeError(f"n-gram order must be at least 1, got n={n}")
        ids = _as_ids(token_ids, "the training corpus")
        if ids.ndim != 1:
            raise LmforgeError(f"the training corpus must be a 1-D array of token ids, got shape {ids.shape}")
        parts = [_sorted_unique(_window_hashes(ids[start:start + chunk_size + n - 1], n))
                 for start in range(0, len(ids) - n + 1, chunk_size)]
        hashes = _sorted_unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)
        return cls(hashes, n)

    def __len__(self) -> int:
        return len(self.hashes)

    def _lookup(self, hashes: np.ndarray) -> np.ndarray:
        if len(self.hashes) == 0:
            return np.zeros(len(hashes), dtype=bool)
        order = np.argsort(hashes)  # sorted needles make searchsorted's memory access near-sequential
        ordered = hashes[order]
        pos = np.minimum(np.searchsorted(self.hashes, ordered), len(self.hashes) - 1)
        found = np.empty(len(hashes), dtype=bool)
        found[order] = self.hashes[pos] == ordered
        return found

    def contains(self, ngrams: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Boolean array: for each row of a (count, n) array of ids, whether it is in the corpus."""
        rows = _as_ids(ngrams, "the n-grams")
        if rows.size == 0:
            return np.zeros(0, dtype=bool)
        if rows.ndim != 2 or rows.shape[1] != self.n:
            raise LmforgeError(f"n-grams must be given as rows of {self.n} token ids, got shape {rows.shape}")
        scrambled = _scramble(rows)
        return self._lookup(_combine([scrambled[:, j] for j in range(self.n)]))

    def share_found(self, token_ids: Sequence[int] | np.ndarray) -> float | None:
        """Share of the text's n-gram positions found verbatim in the corpus; None if shorter than n."""
        ids = _as_ids(token_ids, "the text")
        if len(ids) < self.n:
            return None
        return float(self._lookup(_window_hashes(ids, self.n)).mean())

    def save(self, path: str | os.PathLike) -> None:
        """Write one .npy file: a two-word header (magic, n) followed by the sorted hashes."""
        header = np.array([_MAGIC, self.n], dtype=np.uint64)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate([header, self.hashes]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NGramIndex:
        """Memory-map an index written by `save`."""
        try:
            data = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise LmforgeError(f"n-gram index {path} does not exist; build it with NGramIndex.build "
                               "and save it first") from None
        except ValueError:
            data = None
        if data is None or data.dtype != np.uint64 or data.ndim != 1 or len(data) < 2 or data[0] != _MAGIC:
            raise LmforgeError(f"{path} is not an n-gram index written by NGramIndex.save; rebuild it")
        return cls(data[2:], int(data[1]))
