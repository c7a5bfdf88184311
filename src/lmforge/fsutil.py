"""Atomic writes: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lmforge.errors import LmforgeError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, is_dir: bool = False,
                on_stage: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `final`, on failure remove it.

    For folders an existing `final` is replaced only after the new one is complete (its files flushed to disk),
    in one atomic exchange where the system has one (Linux), so a crash or a full disk mid-write leaves the
    previous version intact; elsewhere the old folder is first moved aside to `.NAME.old`, which
    `recover_folder` puts back after a crash between the two renames. `on_stage` is called with "written" (the
    new version complete, not yet in place) and "published" (in place, the old one not yet removed).
    """
    final = Path(final)
    if not is_dir and final.is_dir():
        raise LmforgeError(f"{final} is a folder; give the name of the file to write (e.g. {final / 'out'})")
    if is_dir and final.exists() and not final.is_dir():
        raise LmforgeError(f"{final} exists and is not a folder; remove it or write the folder elsewhere")
    made = first_missing(final.parent)  # the folders made for it, removed again if the write fails
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
        _flush(tmp, is_dir)
        if on_stage is not None:
            on_stage("written")
        if is_dir:
            old = None
            if final.exists():
                if _exchange(tmp, final):
                    old = tmp  # now holds the previous version
                else:
                    old = final.with_name(f".{final.name}.old")
                    if old.exists():
                        shutil.rmtree(old)
                    os.rename(final, old)
                    if on_stage is not None:
                        on_stage("moved_aside")
                    os.rename(tmp, final)
            else:
                os.rename(tmp, final)
            _flush(final.parent, True, recursive=False)
            if on_stage is not None:
                on_stage("published")
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        _remove_if_empty(final.parent, made)
        if disk_full(exc):
            raise LmforgeError(f"the disk is full while writing {final}; free some space and retry "
                               "(the previous version, if any, is intact)") from exc
        raise


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) says the disk is full, as an OSError or as the text of a
    library's own error (safetensors reports 'No space left on device (os error 28)')."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if not isinstance(exc, OSError) and ("os error 28" in str(exc) or "No space left on device" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


LOCK = ".lmforge.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Hold `folder` (created if needed; yields whether it was) for this process; another process that asks for it
    meanwhile is refused with a sentence naming the holder's process id. The lock is the kernel's (flock on
    `.lmforge.lock`, which holds the process id), so a process that dies, even by SIGKILL, never leaves it stuck:
    a lock file whose process is gone is simply taken over. Where the filesystem has no locks, the process id
    decides."""
    folder = Path(folder)
    top = first_missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    try:
        fd = _take_lock(path, folder)
    except BaseException:
        _remove_if_empty(folder, top)
        raise
    try:
        yield top is not None
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_if_empty(folder, top)


def first_missing(path: str | os.PathLike) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (what `mkdir(parents=True)` creates)."""
    path = Path(path).absolute()
    return next((p for p in reversed([path, *path.parents]) if not p.exists()), None)


def _take_lock(path: Path, folder: Path) -> int:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise LmforgeError(f"{folder} is in use by another lmforge process (process id {holder or 'unknown'}); "
                               "wait for it to finish or stop it, or choose another out_dir") from None
        except OSError as exc:  # no locks on this filesystem (some network filesystems): the process id decides
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            holder = _lock_holder(fd)
            if holder and holder != os.getpid() and _alive(holder):
                os.close(fd)
                raise LmforgeError(f"{folder} is in use by another lmforge process (process id {holder}); wait for "
                                   "it to finish or stop it, or choose another out_dir") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released and removed the file between our open and our lock: try again
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def empty_folder(folder: Path) -> None:
    """Remove what `folder` holds, but its lock file (for the holder of `folder_lock`)."""
    for entry in folder.iterdir():
        if entry.name != LOCK:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _remove_if_empty(folder: Path, top: Path | None) -> None:
    """Remove `folder` and its parents up to `top` (the folders made for it) while they are empty."""
    if top is None:
        return
    folder = folder.absolute()
    for p in [folder, *folder.parents]:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return


def recover_folder(final: str | os.PathLike) -> None:
    """Undo what a crash inside `atomic_path(final, is_dir=True)` left: the previous version put back where a
    crash fell between moving it aside and moving the new one in, and unfinished temporary folders removed.
    Call it only while no other process writes `final` (under the run folder's lock)."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.is_dir() and not final.exists():
        os.rename(old, final)
    shutil.rmtree(old, ignore_errors=True)
    for leftover in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux's renameat2 with RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):  # the system or filesystem lacks it
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _flush(path: Path, is_dir: bool, recursive: bool = True) -> None:
    """fsync a file, or a folder's files and the folder itself, so a rename never publishes unwritten data."""
    paths = ([p for p in path.rglob("*") if p.is_file()] if is_dir and recursive else []) + [path]
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EBADF):  # folders that cannot be synced on some systems
                raise
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
