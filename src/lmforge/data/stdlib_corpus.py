"""A real English corpus that every Python installation carries: the docstrings of its standard
library, read with `ast` from the interpreter's own source files (nothing is imported).

Module, class and function docstrings are kept when they read as prose: doctest examples
(`>>>`/`...` lines and the output lines after them) are removed, and what is left must have at
least `min_chars` characters, mostly letters and spaces. Exact duplicates (after collapsing
whitespace) are dropped. Documents are ordered by file path, then position in the file, so the
same interpreter always yields the same corpus byte for byte.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sysconfig
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.fsutil import write_text_atomic

# Folders of the standard library that hold tests, tools, bundled wheels, generated codec tables
# or third-party code rather than documented modules.
SKIPPED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
    "ensurepip", "encodings", "pydoc_data", "lib-dynload", "__pycache__", "__phello__",
})
MIN_LETTER_SHARE = 0.8
_LETTER_OR_SPACE = re.compile(r"[^\W\d_]|\s")


@dataclass
class CorpusStats:
    n_docs: int
    n_chars: int
    n_files: int
    n_files_skipped: int
    n_duplicates_dropped: int
    seconds: float
    path: Path | None


def _source_files(root: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("config-"))
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _strip_doctests(text: str) -> str:
    """Remove interactive examples: `>>>` and `...` lines and the output lines up to a blank line."""
    kept, in_example = [], False
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith((">>>", "...")):
            in_example = True
        elif not stripped:
            in_example = False
            kept.append("")
        elif not in_example:
            kept.append(line)
    return "\n".join(kept).strip()


def _is_prose(text: str, min_chars: int) -> bool:
    if len(text) < min_chars:
        return False
    letters_and_spaces = len(text) - len(_LETTER_OR_SPACE.sub("", text))
    return letters_and_spaces / len(text) >= MIN_LETTER_SHARE


def _definitions(body: list[ast.AST]) -> Iterator[ast.AST]:
    """Classes and functions among these statements, at any depth of nesting in statements
    (if/try/with/for/match bodies included); expressions are not visited, which keeps it fast."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _definitions(getattr(node, field, ()))


def _docstrings(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(line, column, docstring) of the module and of every class and function in it, in order."""
    found = []
    for node in [tree, *_definitions(tree.body)]:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            found.append((getattr(node, "lineno", 0), getattr(node, "col_offset", 0), doc))
    return sorted(found)


def build_stdlib_corpus(out_path: str | os.PathLike | None = None, min_chars: int = 40,
                        separator: str = "\n\n") -> CorpusStats:
    """Collect the prose docstrings of the running interpreter's standard library.

    The documents are joined with `separator` (e.g. "<|endoftext|>" to mark document boundaries
    unambiguously, since docstrings themselves contain blank lines) and written atomically as
    UTF-8 to `out_path`; with `out_path=None` only the statistics are returned. Files that are
    not UTF-8 or do not parse with this interpreter are skipped and counted.
    """
    start = time.perf_counter()
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    seen: set[bytes] = set()
    n_files = n_skipped = n_duplicates = 0
    for path in _source_files(root):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes().decode("utf-8"), filename=str(path))
        except (UnicodeDecodeError, SyntaxError, ValueError):
            n_skipped += 1
            continue
        n_files += 1
        for _, _, doc in _docstrings(tree):
            text = _strip_doctests(doc)
            if not _is_prose(text, min_chars):
                continue
            key = hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()
            if key in seen:
                n_duplicates += 1
                continue
            seen.add(key)
            docs.append(text)
    corpus = separator.join(docs)
    if out_path is not None:
        out_path = Path(out_path)
        write_text_atomic(out_path, corpus)
    return CorpusStats(n_docs=len(docs), n_chars=len(corpus), n_files=n_files, n_files_skipped=n_skipped,
                       n_duplicates_dropped=n_duplicates, seconds=time.perf_counter() - start, path=out_path)


def build_stdlib_source_corpus(out_path: str | os.PathLike | None = None, separator: str = "\n\n") -> CorpusStats:
    """The running interpreter's standard library source itself (the same files as the docstrings come from):
    about 9 million characters of Python, nearly 6 times the docstrings, for experiments that need more text than
    they hold (the scaling lab's recipe). Files are joined in path order with `separator`; the few non-ASCII
    characters (about 2 in 100,000, in string literals) become '?' so that a character vocabulary stays within
    printable ASCII; files that are not UTF-8 are skipped and counted."""
    start = time.perf_counter()
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    n_skipped = 0
    for path in _source_files(root):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            n_skipped += 1
            continue
        texts.append(_NON_ASCII.sub("?", text).strip("\n"))
    corpus = separator.join(texts)
    if out_path is not None:
        out_path = Path(out_path)
        write_text_atomic(out_path, corpus)
    return CorpusStats(n_docs=len(texts), n_chars=len(corpus), n_files=len(texts), n_files_skipped=n_skipped,
                       n_duplicates_dropped=0, seconds=time.perf_counter() - start, path=out_path)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
