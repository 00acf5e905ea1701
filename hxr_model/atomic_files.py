"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Checkpoints, cache shards, downloads, run records and keys all go through `write_atomic`, so a
crash, a full disk or a failing writer leaves what was there before and no stray temporary file.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(
    path: Path, write: Callable[[io.BufferedWriter], object], mode: int | None = None
) -> None:
    """Call `write` on a temporary file beside `path`, sync it to disk and rename it over `path`.

    Parent folders are created. The file is readable by its owner only (mkstemp's 0600) unless
    `mode` is given; `mode` is applied before the rename, so the file is never visible under its
    name with other permissions. The folder is synced after the rename so the new name survives
    a power cut. Whatever fails (or `write` raises), the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """`write_atomic` of `text` encoded as UTF-8."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")), mode)


def _sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable: the new directory entry is only on disk once the
    directory itself is synced."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
