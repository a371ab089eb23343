"""Rendering the effective configuration, secrets masked."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from deepedge.config._load import LoadedConfig

__all__ = ["SECRET_KEYS", "render_json", "render_toml"]

SECRET_KEYS = frozenset({"broker.password"})
MASK = "********"


def _masked(loaded: LoadedConfig) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = msgspec.to_builtins(loaded.config)
    for key in SECRET_KEYS:
        section, _, name = key.partition(".")
        if data[section].get(name):
            data[section][name] = MASK
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def render_toml(loaded: LoadedConfig) -> str:
    """TOML that loads back to the same config, each key commented with where it came from."""
    lines: list[str] = []
    if loaded.file is not None:
        lines.append(f"# config file: {loaded.file}")
    for section, body in _masked(loaded).items():
        tables = {k: v for k, v in body.items() if isinstance(v, list | tuple) and v and isinstance(v[0], dict)}
        lines.append(f"\n[{section}]")
        for key, value in body.items():
            if key in tables:
                continue
            lines.append(f"{key} = {_toml_value(value)}  # {loaded.source_of(f'{section}.{key}')}")
        for key, rows in tables.items():
            for row in rows:
                lines.append(f"\n[[{section}.{key}]]  # {loaded.source_of(f'{section}.{key}')}")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in row.items())
    return "\n".join(lines).lstrip("\n") + "\n"


def render_json(loaded: LoadedConfig) -> str:
    """The effective configuration as JSON: a section per key as in the file, plus ``sources``
    (every key, "section.key" -> where its value came from: "default", "file PATH", "env VAR" or
    "flag") and ``config_file`` (the file read, or null). Secrets masked."""
    data: dict[str, Any] = dict(_masked(loaded))
    data["sources"] = {
        f"{section}.{key}": loaded.source_of(f"{section}.{key}") for section, body in data.items() for key in body
    }
    data["config_file"] = str(loaded.file) if loaded.file is not None else None
    return json.dumps(data, indent=2)
