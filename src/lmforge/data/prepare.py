"""Tokenize a corpus once: a tokenizer (trained or given) and memory-mapped train/validation token files.

The corpus is streamed twice at most (once to train a tokenizer, once to encode), so its size is
bounded by the disk, not by memory. Tokens of every document are written in order, each document
followed by the tokenizer's end-of-sequence token when it has one; the first `1 - val_fraction` of
the tokens form the training split and the rest the validation split (as nanoGPT does).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.corpus import Corpus, open_corpus
from lmforge.data.tokens import MANIFEST, token_dtype
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path
from lmforge.hub.remote import is_repo_id

BATCH_CHARS = 4 << 20
FORMAT = "lmforge-tokens/1"


@dataclass
class PrepareResult:
    folder: Path
    manifest: dict

    @property
    def tokens(self) -> dict:
        return self.manifest["tokens"]


def load_tokenizer(spec, corpus: Corpus, vocab_size: int):
    """`char` or `bpe` (trained on the corpus), a Tokenizer, or a path to a tokenizer or model folder."""
    from lmforge.tokenizer import Tokenizer

    if isinstance(spec, Tokenizer):
        return spec, "given"
    if spec == "char":
        return Tokenizer.train_char(corpus.texts()), "trained char"
    if spec == "bpe":
        return Tokenizer.train_bpe(corpus.texts(), vocab_size=vocab_size), f"trained bpe ({vocab_size})"
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        return Tokenizer.from_file(path), str(path)
    if path.is_dir() or (not path.exists() and is_repo_id(str(spec))):
        from lmforge.hub.hf import load_tokenizer

        return load_tokenizer(spec), str(spec)
    raise LmforgeError(f"tokenizer {spec!r} is neither 'char', 'bpe', an existing tokenizer.json or folder, nor a "
                       "Hub model name")


def prepare(source: str | os.PathLike, out_dir: str | os.PathLike, tokenizer="char", vocab_size: int = 8192,
            val_fraction: float = 0.1, text_field: str = "text", errors: str = "strict",
            log: Callable[[str], None] | None = None) -> PrepareResult:
    """Tokenize `source` into `out_dir` (train.bin, val.bin, tokenizer.json, manifest.json), atomically."""
    if not 0 < val_fraction < 1:
        raise LmforgeError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    log = log or (lambda message: None)
    start = time.perf_counter()
    corpus = open_corpus(source, text_field=text_field, errors=errors)
    tok, origin = load_tokenizer(tokenizer, corpus, vocab_size)
    dtype = token_dtype(tok.vocab_size)
    eos = tok.eos_token_id
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        all_path = tmp / "all.bin"
        with open(all_path, "wb") as out:
            n_tokens = _encode_corpus(corpus, tok, dtype, eos, out)
        n_train = int(n_tokens * (1 - val_fraction))
        _split_file(all_path, n_train, dtype, tmp / "train.bin", tmp / "val.bin")
        tok.save(tmp)
        seconds = time.perf_counter() - start
        manifest = {
            "format": FORMAT,
            "request": {"source": str(source), "tokenizer": tokenizer if isinstance(tokenizer, str) else str(origin),
                        "vocab_size": vocab_size, "val_fraction": val_fraction, "text_field": text_field,
                        "errors": errors},
            "source": str(source),
            "files": corpus.describe(),
            "text_field": text_field,
            "errors": errors,
            "tokenizer": {"origin": origin, "kind": tok.kind, "vocab_size": tok.vocab_size, "eos_token_id": eos},
            "dtype": dtype.name,
            "val_fraction": val_fraction,
            "documents": corpus.stats["documents"],
            "chars": corpus.stats["chars"],
            "bytes": corpus.stats["bytes"],
            "tokens": {"train": n_train, "val": n_tokens - n_train, "total": n_tokens},
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"prepared {corpus.spec}: {n_tokens:,} tokens (train {n_train:,}, val {n_tokens - n_train:,}) from "
        f"{corpus.stats['bytes']:,} bytes with a {tok.kind} tokenizer of {tok.vocab_size:,} tokens, "
        f"in {seconds:.1f} s ({n_tokens / max(seconds, 1e-9):,.0f} tokens/s) -> {out_dir}")
    return PrepareResult(out_dir, manifest)


def _encode_corpus(corpus: Corpus, tok, dtype: np.dtype, eos: int | None, out) -> int:
    """Encode the pieces in batches of about BATCH_CHARS characters and append the ids to `out`."""
    encode = _char_encoder(tok) or (lambda texts: tok.encode_batch(texts))
    n_tokens, batch, ends, size = 0, [], [], 0

    def flush() -> int:
        arrays = []
        for piece_ids, end in zip(encode(batch), ends):
            arrays.append(np.asarray(piece_ids, dtype=dtype))
            if end and eos is not None:
                arrays.append(np.array([eos], dtype=dtype))
        ids = np.concatenate(arrays)
        ids.tofile(out)
        batch.clear()
        ends.clear()
        return len(ids)

    for text, end in corpus.pieces():
        batch.append(text)
        ends.append(end)
        size += len(text)
        if size >= BATCH_CHARS:
            n_tokens += flush()
            size = 0
    if batch:
        n_tokens += flush()
    return n_tokens


def _char_encoder(tok):
    """A lookup-table encoder for plain character vocabularies, about 50x faster than the generic path.

    It applies only when the tokenizer has no normalizer and no added tokens could occur in the text;
    characters outside the vocabulary map to the unknown token or raise the tokenizer's own error.
    """
    if tok.kind != "char" or tok.backend.normalizer is not None:
        return None
    vocab = tok.backend.get_vocab(with_added_tokens=False)
    added = [t.content for t in tok.backend.get_added_tokens_decoder().values()]
    if any(len(token) != 1 for token in vocab):
        return None
    size = max(ord(c) for c in vocab) + 1
    table = np.full(size, -1, dtype=np.int64)
    for char, index in vocab.items():
        table[ord(char)] = index
    unk = tok.unk_token_id

    def encode(texts: list[str]) -> list:
        out = []
        for text in texts:
            if any(token in text for token in added):
                out.append(tok.encode(text))
                continue
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
            ids = np.where(codes < size, table[np.minimum(codes, size - 1)], -1)
            if (ids < 0).any():
                if unk is None:
                    tok.encode(text)  # raises the tokenizer's error naming the character
                ids = np.where(ids < 0, unk, ids)
            out.append(ids)
        return out

    return encode


def _split_file(all_path: Path, n_train: int, dtype: np.dtype, train_path: Path, val_path: Path) -> None:
    """Copy the tail of `all_path` to `val_path`, truncate the rest and rename it to `train_path`."""
    offset = n_train * dtype.itemsize
    with open(all_path, "r+b") as f, open(val_path, "wb") as val:
        f.seek(offset)
        while chunk := f.read(16 << 20):
            val.write(chunk)
        f.truncate(offset)
    os.replace(all_path, train_path)
