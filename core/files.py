"""Whole files the CLI writes (``llmgw chargeback --out``, the price overrides): never through a planted link.

A fixed side name (``X.partial``, ``X.tmp``) in a shared directory is an
invitation: whoever can write the directory plants a symlink there, and the
next export opens it and writes through it (over ``~/.bashrc``, say).
``atomic_write`` instead creates a fresh temp file beside the target with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (``tempfile.mkstemp``: a random name, never an
existing path, never a link), writes and fsyncs it, then renames it over the
target in one step. ``rename`` replaces a link at the target itself rather
than following it, and readers see the old file or the whole new one, never
half of it. On any failure the temp file is removed and the target untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO, overload


@overload
def atomic_write(path: str | os.PathLike[str], *, binary: Literal[False] = ...,
                 mode: int | None = ...) -> contextlib.AbstractContextManager[TextIO]: ...
@overload
def atomic_write(path: str | os.PathLike[str], *, binary: Literal[True],
                 mode: int | None = ...) -> contextlib.AbstractContextManager[BinaryIO]: ...
def atomic_write(path: str | os.PathLike[str], *, binary: bool = False,
                 mode: int | None = None) -> contextlib.AbstractContextManager[TextIO] | contextlib.AbstractContextManager[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: the target appears whole when the block ends.

    The file is private to its owner (0600, as ``mkstemp`` makes it) unless ``mode`` says otherwise."""
    return _atomic_write(Path(path), binary, mode)


@contextlib.contextmanager
def _atomic_write(target: Path, binary: bool, mode: int | None) -> Iterator[Any]:
    directory = target.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".partial")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:       # the data itself is fsynced; only the directory entry's durability is lost
        return
    finally:
        os.close(fd)


__all__ = ["atomic_write"]
