"""Text corpora as streams: files, folders, JSON Lines, and named public data sets.

A corpus is read in pieces of about `piece_chars` characters, never whole, so a corpus larger than
memory works. A piece ends right after a newline that has a non-space character on both sides, a
point where byte-level BPE pre-tokenization (GPT-2, Llama 3) always splits, so tokenizing piece by
piece gives the same tokens as tokenizing the whole text. (Tokenizers that mark the start of their
input, like SentencePiece's "▁", see one extra start per piece of a document longer than a piece.)
Each file (or JSON Lines record) is one document.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.hub import is_dataset_id
from lmforge.data.public import named_file
from lmforge.data.records import iter_records, parse_json_line, record_format
from lmforge.errors import LmforgeError

PIECE_CHARS = 1 << 20
READ_BYTES = 1 << 20
ERRORS = ("strict", "replace", "ignore")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SAFE_SPLIT = re.compile(r"(?<=\S)\n(?=\S)")


TEXT_DATASETS = {"tinyshakespeare": "input.txt"}  # named corpora (data/public.py knows their sources)


@dataclass
class SourceFile:
    path: Path
    kind: str  # text, jsonl, or records (the other formats of data/records.py: parquet, csv, gzipped, ...)
    bytes: int = 0
    sha256: str = ""


@dataclass
class Corpus:
    """The files of a corpus and how to read them; `pieces()` streams (text, ends_document) pairs."""

    spec: str
    files: list[SourceFile]
    text_field: str = "text"
    errors: str = "strict"
    stats: dict = field(default_factory=lambda: {"documents": 0, "chars": 0, "bytes": 0})

    def pieces(self, piece_chars: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
        """Stream the corpus; also fills each file's `bytes` and `sha256` and `stats`."""
        self.stats = {"documents": 0, "chars": 0, "bytes": 0}
        for source in self.files:
            digest = hashlib.sha256()
            reader = {"text": _read_text, "jsonl": _read_jsonl, "records": _read_records}[source.kind]
            for text, ends in reader(source.path, digest, self.errors, self.text_field, piece_chars):
                self.stats["chars"] += len(text)
                self.stats["documents"] += ends
                yield text, ends
            source.sha256 = digest.hexdigest()
            source.bytes = source.path.stat().st_size
            self.stats["bytes"] += source.bytes
        if self.stats["chars"] == 0:
            raise LmforgeError(f"the corpus {self.spec} is empty (no text in {len(self.files)} file(s)); "
                               "give it some text")

    def texts(self) -> Iterator[str]:
        return (text for text, _ in self.pieces())

    def describe(self) -> list[dict]:
        return [{"path": str(s.path), "bytes": s.bytes, "sha256": s.sha256} for s in self.files]


def open_corpus(spec: str | os.PathLike, text_field: str = "text", errors: str = "strict") -> Corpus:
    """A text file, a folder of them (recursively, hidden files skipped), a .jsonl or .parquet file, a named
    data set, or a Hub data set id (owner/name[:subset/split], read from the files the repository publishes)."""
    if errors not in ERRORS:
        raise LmforgeError(f"errors must be one of {', '.join(ERRORS)}, not {errors!r}")
    path = Path(spec)
    if not path.exists():
        if str(spec) in TEXT_DATASETS:
            path = named_file(str(spec), TEXT_DATASETS[str(spec)])
        elif is_dataset_id(str(spec)):
            from lmforge.data.hub import resolve_dataset

            split = resolve_dataset(str(spec))
            sources = [SourceFile(p, "jsonl" if p.suffix.lower() in JSONL_SUFFIXES else "records")
                       for p in split.files]
            return Corpus(split.description, sources, text_field, errors)
        else:
            raise LmforgeError(f"the corpus {spec} does not exist and is not a named data set "
                               f"(known: {', '.join(TEXT_DATASETS)}) or a Hub data set id (owner/name); check the path")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        files = [path]
    if not files:
        raise LmforgeError(f"the corpus folder {path} holds no files; put text or .jsonl files in it")
    sources = [SourceFile(p, local_kind(p)) for p in files]
    if all(s.path.stat().st_size == 0 for s in sources):
        raise LmforgeError(f"the corpus {spec} is empty; give it some text")
    return Corpus(str(spec), sources, text_field, errors)


def local_kind(path: Path) -> str:
    """A local file is text unless its suffix says JSON Lines, Parquet, or gzipped records."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    fmt = record_format(path)
    return "records" if fmt == "parquet" or (fmt and path.suffix.lower() == ".gz") else "text"


def _decode_error(path: Path, offset: int, data: bytes, exc: UnicodeDecodeError) -> LmforgeError:
    bad = data[exc.start:exc.start + 1].hex()
    return LmforgeError(f"{path} is not UTF-8 text: byte 0x{bad} at byte offset {offset} cannot be decoded; "
                        "convert the file to UTF-8, or substitute such bytes with --errors replace "
                        "(data.errors: replace in a training config)")


def _read_text(path: Path, digest, errors: str, text_field: str, piece_chars: int) -> Iterator[tuple[str, bool]]:
    """A text file in pieces that end at safe split points; the last piece ends the document."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    pending, offset = "", 0
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            digest.update(data)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                # the decoder may hold back up to 3 bytes of an unfinished character from the last block
                held = len(exc.object) - len(data)
                raise _decode_error(path, offset + exc.start - held, exc.object, exc) from None
            offset += len(data)
            pending += text
            if not data:
                break
            while len(pending) >= piece_chars:
                cut = _split_point(pending, piece_chars)
                yield pending[:cut], False
                pending = pending[cut:]
    yield pending, True


def _split_point(text: str, target: int) -> int:
    """The last safe split point before `target` characters, else the first after it, else the end."""
    last = None
    for m in _SAFE_SPLIT.finditer(text, 0, target):
        last = m.end()
    if last is None:
        m = _SAFE_SPLIT.search(text, target)
        last = m.end() if m else len(text)
    return last


def _read_jsonl(path: Path, digest, errors: str, text_field: str, piece_chars: int) -> Iterator[tuple[str, bool]]:
    """One document per record: the string in `text_field`. Blank lines are skipped."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            digest.update(line)
            try:
                raw = line.decode("utf-8", errors=errors)
            except UnicodeDecodeError as exc:
                raise _decode_error(path, offset + exc.start, line, exc) from None
            offset += len(line)
            if not raw.strip():
                continue
            record = parse_json_line(raw, f"{path}, line {number},")
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                keys = ", ".join(sorted(record)) if isinstance(record, dict) else "none"
                raise LmforgeError(f"{path}, line {number}, has no string field {text_field!r} (its fields: {keys}); "
                                   "name the text field with --text-field")
            yield text, True


def _read_records(path: Path, digest, errors: str, text_field: str, piece_chars: int) -> Iterator[tuple[str, bool]]:
    """One document per record of a Parquet, CSV or gzipped file: the string in `text_field`."""
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            digest.update(chunk)
    for where, record in iter_records(path, columns=[text_field]):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise LmforgeError(f"{where} has no string field {text_field!r} (its fields: {', '.join(sorted(record))}); "
                               "name the text field with --text-field (data.text_field in a training config)")
        yield text, True
