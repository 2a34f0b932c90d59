"""Experiment configuration: YAML files with ``_base_`` inheritance, ``${VAR}`` substitution, ``--set``
overrides and strict validation against the typed schema in :mod:`mtlda.schema`.

* ``_base_: file.yaml`` or ``_base_: [a.yaml, b.yaml]`` (paths relative to the including file): bases are
  deep-merged in order, then the including file on top; later wins. Lists are replaced, not merged.
* ``${NAME}`` in a string value is replaced by the config value at the dotted path ``NAME`` if there is one
  (``${name}``, ``${data.height}``), else by the environment variable ``NAME``; ``${NAME:-default}`` gives a
  fallback. An unset variable without a fallback is an error naming the variable, the key and the file.
* ``--set a.b.c=value`` values are parsed as YAML scalars with YAML 1.2 floats (``1e-4`` is a float).
* Unknown keys are rejected naming the file, the key path and the closest valid key; values of the wrong type
  are rejected naming the expected type.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mtlda.errors import UserInputError
from mtlda.files import write_text_atomic
from mtlda.schema import ExperimentConfig


class ConfigError(UserInputError):
    """A problem in an experiment file or an override, with a message that names it."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-4`` (PyYAML reads them as strings)."""


_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
    r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_first, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list(_first))

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)(?::-([^}]*))?\}")


def parse_scalar(text: str) -> Any:
    """A YAML scalar (or flow list/dict) as a Python value: ``'1e-4'`` -> 1e-4, ``'[1, 2]'`` -> [1, 2]."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (pass an existing file, e.g. one in experiments/)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text, so not an experiment (YAML) file; pass one, e.g. from "
                          "experiments/ (a checkpoint goes to --evaluate or --resume)") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {what}{where}; fix the file's syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """A new dict: ``top`` merged into ``base`` recursively (mappings merge, everything else is replaced)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _record_sources(data: dict, source: str, sources: dict[str, str], prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        sources[path] = source
        if isinstance(value, dict):
            _record_sources(value, source, sources, path + ".")


def load_yaml_with_bases(path: Path, sources: dict[str, str], _chain: tuple[Path, ...] = ()) -> dict:
    """The merged mapping of ``path`` and its ``_base_`` files; ``sources`` maps key paths to their file."""
    path = path.resolve()
    if path in _chain:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(str(p) for p in (*_chain, path))}; remove one of "
                          "these _base_ entries")
    data = read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_yaml_with_bases(path.parent / base, sources, (*_chain, path)))
    _record_sources(data, str(path), sources)
    return deep_merge(merged, data)


def apply_override(data: dict, assignment: str) -> dict:
    """A new mapping with ``a.b.c=value`` applied (value parsed as a YAML scalar)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set optim.lr.backbone=1e-4")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key component")
    out = copy.deepcopy(data)
    node = out
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = parse_scalar(raw)
    return out


def _lookup(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def substitute_variables(data: dict, sources: dict[str, str]) -> dict:
    """A new mapping where ``${NAME}`` / ``${NAME:-default}`` in strings are replaced (see module doc)."""

    def resolve(value: Any, path: str, depth: int = 0) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, path) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        if depth > 10:
            raise ConfigError(f"{sources.get(path, '--set')}: {path}: ${{...}} references form a cycle")

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            found = _lookup(data, name)
            if found is not None and not isinstance(found, (dict, list)):
                return str(resolve(found, name, depth + 1))
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{sources.get(path, 'defaults')}: {path}: environment variable {name} is not set "
                f"(export {name}=... or give a default as ${{{name}:-value}})"
            )

        text = _VAR.sub(replace, value)
        if path.endswith(("dir", "root", "workdir", "path")) or "/" in text or text.startswith("~"):
            text = os.path.expanduser(text)
        return text

    return resolve(data, "")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str, sources: dict[str, str]) -> Any:
    where = sources.get(path, "--set/defaults")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {path}: expected a mapping of keys, got {value!r}")
        return _build(tp, value, path, sources)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _convert(value, option, path, sources)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {path}: {value!r} does not match {_type_name(tp)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {path}: expected a list of {_type_name(item)}, got {value!r}")
        return [_convert(v, item, f"{path}[{i}]", sources) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {path}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, item, f"{path}.{k}", sources) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Any:
        return value
    raise ConfigError(f"{where}: {path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_range(value: Any, spec: dataclasses.Field, path: str, sources: dict[str, str]) -> None:
    """The field's minimum (``at_least``), for a number or for every number of a mapping (``optim.lr``)."""
    minimum = spec.metadata.get("min")
    if minimum is None:
        return
    items = {f"{path}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {path: value}
    for where, number in items.items():
        if isinstance(number, (int, float)) and not isinstance(number, bool) and number < minimum:
            raise ConfigError(f"{sources.get(where, sources.get(path, '--set/defaults'))}: {where}: {number!r} is "
                              f"below the minimum {minimum:g}; use {minimum:g} or more")


def _build(cls: type, data: dict, prefix: str, sources: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    names = list(specs)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            valid = ", ".join(names)
            raise ConfigError(
                f"{sources.get(path, '--set')}: unknown key {path!r}{hint} (valid keys here: {valid})"
            )
        kwargs[key] = _convert(value, hints[key], path, sources)
        _check_range(kwargs[key], specs[key], path, sources)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config dataclass (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: typing.Sequence[str] = (),
    schema: type = ExperimentConfig,
    stored: typing.Mapping[str, Any] | None = None,
) -> Any:
    """The validated config: schema defaults <- ``stored`` (e.g. a checkpoint's config) or ``path`` (with its
    bases) <- ``--set`` overrides."""
    sources: dict[str, str] = {}
    data = to_dict(schema())
    if stored is not None:
        data = deep_merge(data, dict(stored))
        _record_sources(dict(stored), "the checkpoint's config", sources)
    if path is not None:
        data = deep_merge(data, load_yaml_with_bases(Path(path), sources))
    for assignment in overrides:
        data = apply_override(data, assignment)
        sources[assignment.partition("=")[0].strip()] = "--set"
    data = substitute_variables(data, sources)
    return _build(schema, data, "", sources)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (temporary file + rename)."""
    write_text_atomic(path, dump_config(cfg))
