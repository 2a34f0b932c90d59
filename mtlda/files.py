"""Atomic file writes: the one implementation every writer of mtlda uses (checkpoints, configs, results, data).

A file is written under a temporary name in its own folder, flushed and fsynced, then renamed over the target,
so a crash, a kill or a full disk never leaves a truncated file: readers see the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mtlda.errors import MtldaError


class WriteError(MtldaError, OSError):
    """A file could not be written (full disk, read-only folder, a file where a folder should be)."""


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Context manager yielding a binary handle whose content replaces ``path`` atomically on success.

    On any error the temporary file is removed, ``path`` is left as it was, and OSError becomes :class:`WriteError`
    naming the file and the cause.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err} (check the folder exists, is a folder and is "
                         "writable)") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {err.strerror or err}; the previous file (if any) is unchanged "
                         "(free disk space or choose another folder)") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(payload)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())
