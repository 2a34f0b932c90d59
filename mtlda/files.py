"""Atomic file writes: the one implementation every writer of mtlda uses (checkpoints, configs, results, data,
plots, exported models), and the check that an output never replaces its own input.

A file is written under a temporary name in its own folder, flushed and fsynced, then renamed over the target,
so a crash, a kill or a full disk never leaves a truncated file: readers see the old file or the new one. The file
gets the permissions of an ordinary new file (0666 minus the umask).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mtlda.errors import MtldaError, UserInputError


class WriteError(MtldaError, OSError):
    """A file could not be written (full disk, read-only folder, a file where a folder should be)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to (also for writers that need a file name, such as model
    exporters); on success the file is fsynced and renamed over ``path``, on any error it is removed and ``path``
    is left as it was. OSError becomes :class:`WriteError` naming the file and the cause."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err} (check the folder exists, is a folder and is "
                         "writable)") from err
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {err.strerror or err}; the previous file (if any) is unchanged "
                         "(free disk space or choose another folder)") from err
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` atomically on success (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        yield handle


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(payload)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


# The files a training run writes into its folder (besides tb/ and panels/): never an export's or a table's target.
RUN_FILES = frozenset({"last.pt", "best.pt", "config.yaml", "results.json", "results.md", "scalars.csv", "log.txt"})


def refuse_overwriting_source(out: Path, source: Path, option: str = "--out") -> None:
    """UserInputError when writing ``out`` would replace ``source`` or a file of its run folder (checkpoints,
    config, results, logs), or ``out`` is a folder."""
    if out.is_dir():
        raise UserInputError(f"{option} {out} is a folder: name the file to write")
    if out.resolve() == source.resolve():
        raise UserInputError(f"{option} {out} is the input file itself: name a new file (the input is kept)")
    if out.name in RUN_FILES and out.resolve().parent == source.resolve().parent:
        raise UserInputError(f"{option} {out} would replace the run's own {out.name}: name a file of its own")
