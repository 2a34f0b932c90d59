"""Checked renaming of a foreign state dict onto the state dict of an mtlda module.

A converter supplies a translator (foreign key -> mtlda key, or None when no rule knows the key);
:func:`translate_keys` applies it to every key and refuses keys no rule maps or two keys landing on one name, and
:func:`check_fits` compares the result with the state dict of the module it is meant for: nothing missing, nothing
left over, every shape equal. Errors name the first offending keys and say what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import Tensor

from mtlda.errors import UserInputError

KeyTranslator = Callable[[str], str | None]
SHOWN_KEYS = 5


class WeightImportError(UserInputError):
    """A weight file that does not fit the mtlda model it is imported into; the message names the keys."""


def first_keys(keys: Sequence[str], limit: int = SHOWN_KEYS) -> str:
    """'a, b, c' or 'a, b, c, ... (12 in all)' for the first ``limit`` keys."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def translate_keys(keys: Iterable[str], translate: KeyTranslator, source: str) -> dict[str, str]:
    """Foreign key -> mtlda key for every key of ``keys`` (in their order).

    WeightImportError naming the first keys that no rule maps, or the first mtlda key two foreign keys map to.
    ``source`` names the file or format in messages.
    """
    names: dict[str, str] = {}
    unmapped: list[str] = []
    claimed: dict[str, str] = {}
    for key in keys:
        target = translate(key)
        if target is None:
            unmapped.append(key)
            continue
        if target in claimed:
            raise WeightImportError(
                f"{source}: keys {claimed[target]} and {key} both map to {target}; the file does not have the layout "
                "this importer reads (check --from and the experiment)"
            )
        claimed[target] = key
        names[key] = target
    if unmapped:
        raise WeightImportError(
            f"{source}: {len(unmapped)} key(s) that no rule maps: {first_keys(unmapped)}; the file is not a "
            "checkpoint of the model this importer reads (check --from, and that the file is the state dict alone)"
        )
    return names


def check_fits(state: Mapping[str, Tensor], target: Mapping[str, Tensor], source: str) -> None:
    """WeightImportError unless ``state`` has exactly the keys of ``target`` with the same shapes.

    The message names the first mtlda keys the file does not provide, the first keys it has in excess and the first
    shape mismatches (both shapes), and suggests the experiment settings to check.
    """
    missing = [key for key in target if key not in state]
    extra = [key for key in state if key not in target]
    mismatched = [
        f"{key} {tuple(state[key].shape)} in the file vs {tuple(target[key].shape)} in the model"
        for key in target
        if key in state and tuple(state[key].shape) != tuple(target[key].shape)
    ]
    problems = [
        f"{label}: {first_keys(keys)}"
        for label, keys in (
            ("mtlda keys the file does not provide", missing),
            ("converted keys the model does not have", extra),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise WeightImportError(
            f"{source} does not fit the mtlda model: {'; '.join(problems)}. Use the experiment that mirrors the "
            "checkpoint (tasks, classes, backbone, decoder_channels, stages, scales)"
        )
