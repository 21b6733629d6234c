"""Config values -> typed dataclasses, with errors that point at the file, line and key.

yaml_lines.py reads the files (every key with its line, includes merged); here --set
overrides are applied, every value is checked against its dataclass field's type with a
did-you-mean for unknown keys, each section validates itself, and paths can be checked
before any GPU time is spent."""
from __future__ import annotations

import dataclasses
import difflib
import glob
import os
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

from ..urls import is_url
from .errors import ConfigError, ConfigValueError
from .yaml_lines import Lines, read_yaml

_MISSING = dataclasses.MISSING


def _set_override(data: dict, expr: str, lines: Lines) -> None:
    if "=" not in expr:
        raise ConfigError(f"override {expr!r} must look like key.path=value", source="--set")
    dotted, raw = expr.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            idx = _list_index(node, key, dotted)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"cannot set {dotted}: {'.'.join(keys[:i + 1])} is not a section",
                                  source="--set")
    lines[dotted] = (f"--set {expr}", None)


def _list_index(items: list, key: str, dotted: str) -> int:
    """A list element is addressed by index or, for named items (sources, runs), by name."""
    if key.lstrip("-").isdigit():
        idx = int(key)
        if -len(items) <= idx < len(items):
            return idx
        raise ConfigError(f"index {idx} out of range (list has {len(items)} items)",
                          source="--set", key=dotted)
    names = [it.get("name") for it in items if isinstance(it, dict)]
    if key in names:
        return names.index(key)
    raise ConfigError(f"no item named {key!r}; names are {names}", source="--set", key=dotted)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


class _Builder:
    def __init__(self, lines: Lines, default_source: str, *, lenient: bool = False):
        # lenient: a config saved by an older version (in a checkpoint) may hold keys that
        # were renamed or removed since; they are carried over or dropped, not refused.
        self.lines, self.default_source, self.lenient = lines, default_source, lenient

    def where(self, path: str) -> dict:
        source, line = self.lines.get(path, (self.default_source, None))
        return {"source": source, "line": line, "key": path or None}

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(message, **self.where(path))

    def build(self, tp: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.build(arg, value, path)
                except ConfigError as e:
                    errors.append(e)
            if len(errors) == 1:
                raise errors[0]
            raise self.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        if origin is Literal:
            choices = typing.get_args(tp)
            if value in choices:
                return value
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise self.fail(path, f"expected one of {', '.join(repr(c) for c in choices)}, "
                                  f"got {value!r}{extra}")
        if origin is list:
            if not isinstance(value, list):
                raise self.fail(path, f"expected a list, got {type(value).__name__} {value!r}")
            (item,) = typing.get_args(tp)
            return [self.build(item, v, f"{path}.{i}") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise self.fail(path, f"expected a mapping, got {type(value).__name__} {value!r}")
            _, vt = typing.get_args(tp)
            return {str(k): self.build(vt, v, f"{path}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            return self.build_dataclass(tp, value, path)
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise self.fail(path, f"expected true or false, got {value!r}")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise self.fail(path, f"expected an integer, got {value!r}")
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML reads "1e-5" (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            raise self.fail(path, f"expected a number, got {value!r}")
        if tp is str:
            if isinstance(value, str):
                return os.path.expandvars(value)  # ${USER} in cluster paths
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise self.fail(path, f"expected a string, got {value!r}")
        raise self.fail(path, f"unsupported field type {tp}")

    def build_dataclass(self, cls: type, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping (section {cls.__name__}), got {value!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        value = self.moved_keys(cls, value, path)
        for key in value:
            if key not in fields:
                hint = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                sub = f"{path}.{key}" if path else key
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise self.fail(sub, f"unknown key{extra} (valid keys: {', '.join(sorted(fields))})")
        kwargs = {}
        for name, f in fields.items():
            sub = f"{path}.{name}" if path else name
            if name in value:
                kwargs[name] = self.build(hints[name], value[name], sub)
            elif f.default is _MISSING and f.default_factory is _MISSING:
                raise self.fail(sub, f"missing required value ({_type_name(hints[name])})")
        obj = cls(**kwargs)
        return obj

    def moved_keys(self, cls: type, value: dict, path: str) -> dict:
        """A section's RENAMED {old: new} and REMOVED {old: why} keys: an error that says
        what to write instead, or (lenient) the value under its new name."""
        renamed, removed = getattr(cls, "RENAMED", {}), getattr(cls, "REMOVED", {})
        if not any(k in renamed or k in removed for k in value):
            return value
        out = {}
        for key, v in value.items():
            sub = f"{path}.{key}" if path else key
            if key in renamed:
                new = f"{path}.{renamed[key]}" if path else renamed[key]
                if not self.lenient:
                    raise self.fail(sub, f"renamed to {new}")
                out.setdefault(renamed[key], v)
            elif key in removed:
                if not self.lenient:
                    raise self.fail(sub, f"removed: {removed[key]}")
            else:
                out[key] = v
        return out


def _dataclasses(obj: Any, path: str = ""):
    """Every dataclass in a config tree (through lists) with its dotted path, children before
    their parent: the one walker behind validation and path checks."""
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _dataclasses(v, f"{path}.{i}")
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        yield from _dataclasses(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
    yield obj, path


def _walk_validate(obj: Any, path: str, builder: _Builder) -> None:
    for node, at in _dataclasses(obj, path):
        validate = getattr(node, "validate", None)
        if validate is None:
            continue
        try:
            validate()
        except ConfigValueError as e:
            sub = f"{at}.{e.field}" if at and e.field else (e.field or at)
            raise builder.fail(sub, e.message) from None


def check_paths(obj: Any, path: str = "", builder: _Builder | None = None) -> None:
    """Fail early on local paths that must exist (fields with metadata path='exists')."""
    builder = builder or _Builder(Lines(), "<config>")
    for node, at in _dataclasses(obj, path):
        for f in dataclasses.fields(node):
            kind = f.metadata.get("path")
            value = getattr(node, f.name)
            if not (kind and isinstance(value, str) and value and not is_url(value)):
                continue
            sub = f"{at}.{f.name}" if at else f.name
            if kind == "exists" and not os.path.exists(value):
                raise builder.fail(sub, f"path does not exist: {value}")
            if kind == "glob" and not glob.glob(value, recursive=True):
                raise builder.fail(sub, f"no file matches {value!r}")
            if kind == "local_or_hub" and looks_local(value) and not os.path.exists(value):
                raise builder.fail(sub, f"path does not exist: {value}")
            if kind == "shards":
                missing = _missing_shards(value)
                if missing:
                    raise builder.fail(sub, f"no shards at {missing} (run `delia data shard ... --out` first?)")


def _missing_shards(spec: str) -> str | None:
    """The part of a local shard spec (manifest, directory, glob or brace pattern) that names
    nothing on disk, or None; `pipe:` and other URLs are the reader's to open."""
    if is_url(spec) or spec.startswith("pipe:"):
        return None
    if spec.endswith(".json") or os.path.isdir(spec):
        return None if os.path.exists(spec) else spec
    from braceexpand import braceexpand
    return next((p for p in braceexpand(spec) if not glob.glob(p)), None)


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def looks_local(value: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else (a/b/c, ./x, /x) is a local path."""
    return os.path.exists(value) or not _HUB_ID.match(value) or value.startswith((".", "~"))


def load(cls: type, path: str | os.PathLike | None = None, overrides: list[str] = (),
         *, paths: bool = False) -> Any:
    data, lines = read_yaml(path) if path is not None else ({}, Lines())
    for expr in overrides:
        _set_override(data, expr, lines)
    builder = _Builder(lines, str(path) if path else "<defaults>")
    obj = builder.build_dataclass(cls, data, "")
    _walk_validate(obj, "", builder)
    if paths:
        check_paths(obj, "", builder)
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a config from to_dict() output (e.g. from a checkpoint), validated."""
    builder = _Builder(Lines(), "<dict>", lenient=True)
    obj = builder.build_dataclass(cls, data, "")
    _walk_validate(obj, "", builder)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None, width=100)
