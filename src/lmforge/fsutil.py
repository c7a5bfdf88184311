"""Atomic writes: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `final`, on failure remove it.

    For folders an existing `final` is replaced only after the new one is complete, so a crash or a
    full disk mid-write leaves the previous version intact.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())  # mkdtemp/mkstemp create private (0700/0600) paths
    try:
        yield tmp
        if is_dir:
            old = None
            if final.exists():
                old = final.with_name(f".{final.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.rename(final, old)
            os.rename(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == 28:
            raise LmforgeError(f"the disk is full while writing {final}; free some space and retry "
                               "(the previous version, if any, is intact)") from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
