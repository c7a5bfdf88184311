"""Records of tabular data files, the formats data sets are published in: JSON Lines, JSON arrays, CSV, TSV and
Parquet, each also gzipped (`train.jsonl.gz`). Parquet is read in row groups with pyarrow, never whole."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
BATCH_ROWS = 1024


def record_format(path: Path) -> str | None:
    """'jsonl', 'json', 'csv', 'tsv' or 'parquet' from the suffix (under a .gz), None for other files."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes.pop()
    return FORMATS.get(suffixes[-1]) if suffixes else None


def iter_records(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of `path`; `where` names the file and line or row for messages.
    `columns` limits a Parquet file to those columns (the others are never read)."""
    kind = record_format(path)
    if kind is None:
        raise LmforgeError(f"cannot tell the format of {path} from its suffix; use .jsonl, .json, .csv, .tsv or "
                           ".parquet (optionally .gz)")
    if kind == "parquet":
        yield from _parquet(path, columns)
        return
    try:
        with _open_text(path) as f:
            if kind in ("csv", "tsv"):
                yield from _delimited(path, f, "\t" if kind == "tsv" else ",")
            else:
                yield from _json(path, f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise LmforgeError(f"{path} is not a valid gzip file ({exc}); the download may be truncated") from None
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{path} is not UTF-8 text (byte {exc.start} of a line); convert it to UTF-8") from None


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _json(path: Path, f) -> Iterator[tuple[str, dict]]:
    """JSON Lines, or one JSON array of objects (the two shapes a .json data file has on the Hub)."""
    is_array = f.read(4096).lstrip().startswith("[")
    f.seek(0)
    if is_array:
        try:
            records = json.load(f)
        except json.JSONDecodeError as exc:
            raise LmforgeError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        for index, record in enumerate(records):
            yield _object(record, f"{path} record {index + 1}")
        return
    for number, line in enumerate(f, 1):
        if line.strip():
            yield _object(parse_json_line(line, f"{path} line {number}"), f"{path} line {number}")


def parse_json_line(line: str, where: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise LmforgeError(f"{where} is not valid JSON ({exc.msg}); write one JSON object per line") from None


def _object(record, where: str) -> tuple[str, dict]:
    if not isinstance(record, dict):
        raise LmforgeError(f"{where} holds a {type(record).__name__}, not a JSON object with named fields")
    return where, record


def _delimited(path: Path, f, delimiter: str) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(f, delimiter=delimiter)
    if not reader.fieldnames:
        raise LmforgeError(f"{path} is empty; its first row must name the columns")
    for row in reader:
        yield f"{path} line {reader.line_num}", {k: v for k, v in row.items() if k is not None}


def _parquet(path: Path, columns: list[str] | None) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LmforgeError(f"{path} is not a valid Parquet file ({exc}); the download may be truncated") from None
    names = table.schema_arrow.names
    if columns:
        lacking = [c for c in columns if c not in names]
        if lacking:
            raise LmforgeError(f"{path} has no column {lacking[0]!r} (its columns: {', '.join(names)}); name the field "
                               "to read with --data.text_field (or the source/target field options)")
    row = 0
    for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            row += 1
            yield f"{path} row {row}", record
