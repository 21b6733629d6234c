"""A config file's values with the file and line of every key: YAML composed as a node
tree (not just safe_load) so a typo in a 300-line config is reported where it is, and the
files a top-level `include:` lists merged beneath the file's own values."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class Lines(dict):
    """Maps a dotted key path to (source, line)."""


def _to_python(node: yaml.Node, path: str, source: str, lines: Lines) -> Any:
    lines.setdefault(path, (source, node.start_mark.line + 1))  # a key's own line wins
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            sub = f"{path}.{key}" if path else key
            if key in out:
                raise ConfigError("duplicate key", source=source, key=sub,
                                  line=key_node.start_mark.line + 1)
            lines[sub] = (source, key_node.start_mark.line + 1)
            out[key] = _to_python(value_node, sub, source, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, f"{path}.{i}", source, lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def read_yaml(path: str | os.PathLike, _chain: tuple[str, ...] = ()) -> tuple[dict, Lines]:
    """The file's values on top of those of the files its top-level `include:` lists."""
    data, lines = _read_one(path)
    if "include" not in data:
        return data, lines
    source, includes = str(path), data.pop("include")
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError("expected a list of YAML file paths", source=source, key="include",
                          line=lines["include"][1])
    merged, merged_lines = {}, Lines()
    here = Path(path).resolve()
    for i, rel in enumerate(includes):
        target = (here.parent / os.path.expandvars(rel)).resolve()
        at = lines.get(f"include.{i}", lines["include"])
        if not target.is_file():
            raise ConfigError(f"included file not found: {target}", source=source, key=f"include.{i}", line=at[1])
        if str(target) in (*_chain, str(here)):
            raise ConfigError(f"include cycle through {target}", source=source, key=f"include.{i}", line=at[1])
        sub, sub_lines = read_yaml(target, (*_chain, str(here)))
        _merge(merged, sub, merged_lines, sub_lines)
    _merge(merged, data, merged_lines, Lines({k: v for k, v in lines.items() if not k.startswith("include")}))
    return merged, merged_lines


def _merge(into: dict, top: dict, into_lines: Lines, top_lines: Lines, path: str = "") -> None:
    """Deep-merge mapping `top` over `into` (a list or scalar in `top` replaces the whole
    value), keeping each value's (file, line) for error messages."""
    for key, value in top.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into_lines[sub] = top_lines.get(sub, into_lines.get(sub))
            _merge(into[key], value, into_lines, top_lines, sub)
            continue
        into[key] = value
        for k in [k for k in into_lines if k == sub or k.startswith(sub + ".")]:
            del into_lines[k]
        into_lines.update({k: v for k, v in top_lines.items() if k == sub or k.startswith(sub + ".")})


def _read_one(path: str | os.PathLike) -> tuple[dict, Lines]:
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError("config file not found", source=source)
    text = Path(path).read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(e, 'problem', e)}", source=source,
                          line=mark.line + 1 if mark else None) from None
    lines = Lines()
    data = {} if root is None else _to_python(root, "", source, lines)
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of sections", source=source)
    return data, lines
