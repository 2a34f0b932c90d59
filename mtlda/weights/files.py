"""Reading foreign weight files as data: ``torch.load(weights_only=True)``, never unpickling code."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mtlda.weights.mapping import WeightImportError

METADATA_TYPES = (bool, int, float, str)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the provenance of an import)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(err: BaseException) -> str:
    """The error's type and the start of its first line."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:120]}" if text else type(err).__name__


def load_state_dict(source: str | os.PathLike | bytes, name: str) -> tuple[dict[str, Tensor], dict[str, object]]:
    """(tensors, metadata) of a state-dict file or its bytes; ``name`` is used in messages.

    The file is read with ``torch.load(weights_only=True)``. Plain scalar entries (e.g. Monodepth2's ``height``)
    are returned as metadata. WeightImportError with what to do when the file holds objects other than tensors
    or is not a state dict.
    """
    handle = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise WeightImportError(f"weight file not found: {source}")
    try:
        loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, IndexError, KeyError,
            UnicodeDecodeError) as err:  # what torch.load raises on files it cannot read as data
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):  # a class the loader refuses
            raise WeightImportError(
                f"{name} cannot be read as data (torch.load(weights_only=True): {_reason(err)}). It holds more "
                "than tensors (a pickled model, optimizer or custom class). On a machine with the code that wrote "
                "it, re-save the state dict alone: torch.save(dict(model.state_dict()), 'weights.pkl'), then import "
                "that file"
            ) from None
        raise WeightImportError(f"{name} is not a PyTorch weight file or is truncated (torch.load: "
                                f"{_reason(err)}); download or copy it again") from None
    if not isinstance(loaded, Mapping):
        raise WeightImportError(f"{name} holds a {type(loaded).__name__}, not a state dict (name -> tensor); "
                                "re-save it with torch.save(model.state_dict(), path)")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, Tensor)}
    metadata = {key: value for key, value in loaded.items() if isinstance(value, METADATA_TYPES)}
    other = sorted(str(key) for key in loaded if key not in tensors and key not in metadata)
    if other:
        raise WeightImportError(
            f"{name} is not a plain state dict: entries {', '.join(other[:5])} are neither tensors nor scalars "
            "(a training checkpoint?); save the model's state_dict() alone and import that"
        )
    return tensors, metadata
