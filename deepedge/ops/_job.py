"""``deepedge submit``: a job spec from flags and a TOML job file, with one name per field.

A job file's keys are the submit flags' names with ``_`` (``--learning-rate`` is
``learning_rate``); ``lr`` is accepted as an alias, as the flag ``--lr`` is. Flags override the
file. An unknown key, a value that is not a string, number or boolean, or a file that cannot be
read is a ConfigError (one line, exit 78), like any other configuration file's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepedge.config import ConfigError, read_toml

__all__ = [
    "JOB_ALIASES",
    "JOB_FIELDS",
    "REQUIRED_JOB_FIELDS",
    "builtin_gradient_bytes",
    "job_spec",
    "parse_duration",
    "read_job_file",
]

JOB_FIELDS = (
    "job",
    "model",
    "dataset",
    "output",
    "epochs",
    "global_batch",
    "learning_rate",
    "base_checkpoint",
    "seed",
    "split",
    "dataset_size",
    "model_bytes",
    "lc_control",
)
REQUIRED_JOB_FIELDS = ("model", "dataset", "output", "epochs", "global_batch", "learning_rate")
JOB_ALIASES = {"lr": "learning_rate"}  # as the flag --lr

# the built-in models' trainable parameters: (the rest, per class of the head), counted from
# deepedge.training.build_model (tests/test_cli.py keeps them so); torch-free, for the CLI
_BUILTIN_PARAMS = {
    "cnn-small": (5184, 513),
    "resnet18": (11176512, 513),
    "resnet18-gn": (11176512, 513),
    "mobilenet_v2": (2223872, 1281),
    "mobilenet_v2-gn": (2223872, 1281),
}


def builtin_gradient_bytes(model: str, classes: int) -> int | None:
    """Bytes of one float32 gradient of a built-in ``model`` with ``classes`` outputs (what
    ``model_bytes`` is: the all-reduce's payload per step); None for any other model."""
    if model not in _BUILTIN_PARAMS or classes < 1:
        return None
    rest, per_class = _BUILTIN_PARAMS[model]
    return 4 * (rest + per_class * classes)


def read_job_file(path: Path) -> dict[str, Any]:
    """The job file's fields, aliases resolved. Raises ConfigError naming the file and the key."""
    data = read_toml(path, "job file")
    spec: dict[str, Any] = {}
    given: dict[str, str] = {}  # field -> the key that gave it
    for key, value in data.items():
        name = JOB_ALIASES.get(key, key)
        if name not in JOB_FIELDS:
            raise ConfigError(f"job file {path}: unknown key {key!r} (known: {', '.join(JOB_FIELDS)}; {_aliases()})")
        if name in given:
            raise ConfigError(f"job file {path}: {given[name]!r} and {key!r} are the same field ({name}); give one")
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"job file {path}: {key} must be a string, a number or a boolean")
        spec[name] = value
        given[name] = key
    return spec


def _aliases() -> str:
    return ", ".join(f"{alias} for {name}" for alias, name in JOB_ALIASES.items())


def job_spec(from_file: Mapping[str, Any], flags: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The file's fields overridden by the flags that were given (not None), and the required
    fields still missing."""
    spec = dict(from_file)
    spec.update({k: v for k, v in flags.items() if v is not None})
    return spec, [name for name in REQUIRED_JOB_FIELDS if name not in spec]


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``12h``, ``7d`` or a plain number of seconds; ConfigError
    (exit 78) otherwise."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ConfigError(f"{text!r} is not a duration (e.g. 90s, 30m, 12h, 7d)") from None
    if not 0 <= seconds < 1e12:
        raise ConfigError(f"{text!r} is not a duration (e.g. 90s, 30m, 12h, 7d)")
    return seconds
