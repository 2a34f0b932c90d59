"""The data layer's error type and the recovery of its message from a DataLoader worker.

A :class:`DatasetError` message is one line naming the folder or file and how to fix it. In a DataLoader worker,
torch re-raises the worker's exception in the main process as the same type with the text
``"Caught DatasetError in DataLoader worker process 1.\\nOriginal Traceback ...: <message>"``;
:func:`original_message` gives back ``<message>``, so that the user reads the same line with and without workers.
"""

from __future__ import annotations

import re

from mtlda.errors import MtldaError

_WORKER_HEADER = re.compile(r"Caught (?P<type>\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


class DatasetError(MtldaError, ValueError):
    """A data set folder or file is missing, empty or unreadable; the message names it and how to fix it."""


def original_message(exc: BaseException) -> str:
    """The message ``exc`` had where it was raised: unchanged for an ordinary exception, the worker's own message
    (without torch's "Caught ... in DataLoader worker process N" header and traceback) for one re-raised by a
    DataLoader."""
    text = str(exc)
    header = _WORKER_HEADER.match(text)
    if header is None:
        return text
    final_line = re.compile(rf"^(?:[\w.]+\.)?{header['type']}(?:: |$)")
    lines = text.rstrip("\n").splitlines()
    for start in range(len(lines) - 1, 0, -1):
        found = final_line.match(lines[start])
        if found:
            return "\n".join([lines[start][found.end():], *lines[start + 1:]]).strip()
    return text
