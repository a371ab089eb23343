"""Loading the configuration: defaults < TOML file < ``DEEPEDGE_*`` environment < CLI flags.

Every value remembers where it came from so ``deepedge config show`` can say, and so an error
names the place to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from deepedge.compat import tomllib
from deepedge.config._model import Config
from deepedge.errors import DeepEdgeError, ExitCode

__all__ = ["DEFAULT_CONFIG_PATH", "ConfigError", "LoadedConfig", "load_config", "read_toml"]

DEFAULT_CONFIG_PATH = Path("/etc/deepedge/deepedge.toml")
ENV_PREFIX = "DEEPEDGE_"
_SECTIONS = {name: typ for name, typ in zip(Config.__struct_fields__, Config.__annotations__.values(), strict=True)}
_PATH_IN_ERROR = re.compile(r"at `\$\.([A-Za-z0-9_.\[\]]+)`")


class ConfigError(DeepEdgeError):
    """The configuration is wrong. One line, names the key and where it came from."""

    exit_code = ExitCode.CONFIG


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    sources: dict[str, str] = field(default_factory=dict)  # "broker.url" -> "file /etc/..."
    file: Path | None = None

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")


def _section_fields() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name in Config.__struct_fields__:
        default = getattr(Config(), name)
        out[name] = type(default).__struct_fields__
    return out


_FIELDS = _section_fields()


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The TOML file's tables; every way it can be wrong is a one-line ConfigError naming
    ``what`` (a config file, a job file) and the path."""
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def _env_layer(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """``DEEPEDGE_<SECTION>_<KEY>`` -> {"section.key": (value, source)}. Unknown ones are errors:
    a typo in a unit file should not be silently ignored."""
    out: dict[str, tuple[Any, str]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == "DEEPEDGE_CONFIG":
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        for section, keys in _FIELDS.items():
            if rest.startswith(section + "_") and rest[len(section) + 1 :] in keys:
                out[f"{section}.{rest[len(section) + 1 :]}"] = (value, f"env {var}")
                break
        else:
            raise ConfigError(f"unknown environment variable {var} (expected {ENV_PREFIX}<SECTION>_<KEY>)")
    return out


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    for section, body in data.items():
        if section not in _FIELDS:
            raise ConfigError(f"unknown section [{section}] in {source}")
        if not isinstance(body, Mapping):
            raise ConfigError(f"[{section}] in {source} must be a table")
        for key, value in body.items():
            out[f"{section}.{key}"] = (value, source)
    return out


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Load the effective configuration.

    ``path``: an explicit file (must exist); else ``$DEEPEDGE_CONFIG`` (must exist); else
    ``/etc/deepedge/deepedge.toml`` if present. ``overrides``: CLI flags as {"section.key": value};
    ``None`` values are ignored.
    """
    env = os.environ if environ is None else environ
    file: Path | None = None
    if path is not None:
        file = Path(path)
    elif env.get("DEEPEDGE_CONFIG"):
        file = Path(env["DEEPEDGE_CONFIG"])
    elif DEFAULT_CONFIG_PATH.is_file():
        file = DEFAULT_CONFIG_PATH

    layers: dict[str, tuple[Any, str]] = {}
    if file is not None:
        layers.update(_flatten(read_toml(file), f"file {file}"))
    layers.update(_env_layer(env))
    for key, value in (overrides or {}).items():
        if value is not None:
            layers[key] = (value, "flag")

    nested: dict[str, dict[str, Any]] = {}
    for key, (value, _src) in layers.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    try:
        config = msgspec.convert(nested, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), layers)) from None
    return LoadedConfig(config, {k: src for k, (_v, src) in layers.items()}, file)


def _explain(message: str, layers: Mapping[str, tuple[Any, str]]) -> str:
    match = _PATH_IN_ERROR.search(message)
    text = message.replace("Object contains unknown field", "unknown key")
    if match is None:
        return f"bad configuration: {text}"
    key = match.group(1)
    head = ".".join(key.split(".")[:2]).split("[")[0]
    source = layers.get(head, (None, None))[1]
    if source is None:  # an unknown key: name its section's source
        section = key.split(".")[0]
        source = next((src for k, (_v, src) in layers.items() if k.startswith(section + ".")), "default")
    if text.startswith("Invalid enum value"):  # name the values it takes (a new operator's review)
        choices = _choices(key)
        if choices:
            text = f"{text.split(' - ')[0]} (one of: {', '.join(choices)}) - {text.split(' - ', 1)[-1]}"
    return f"bad configuration ({source}): {_PATH_IN_ERROR.sub(f'at {key}', text)}"


def _choices(key: str) -> list[str]:
    """The values a Literal setting ``key`` ("log.level") takes; [] where it is not one."""
    import msgspec.inspect as mi

    t: Any = mi.type_info(Config)
    for name in key.split("."):
        while isinstance(t, mi.UnionType):  # (an optional section)
            t = next((x for x in t.types if not isinstance(x, mi.NoneType)), None)
        if not isinstance(t, mi.StructType):
            return []
        t = next((f.type for f in t.fields if f.encode_name == name), None)
    return [str(v) for v in t.values] if isinstance(t, mi.LiteralType) else []
