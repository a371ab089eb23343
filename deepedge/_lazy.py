"""Package attributes that load their module on first use (PEP 562): a package whose
``__init__`` names heavy modules (torch, scikit-learn, cvxpy) without importing them, so that a
process which needs one light module of it (a worker reading its plan, a bench's bare baseline
agent, the node daemon's stressors) does not pay for the rest."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_attributes(
    package: str, lazy: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``lazy`` maps a name to the module
    that defines it; once loaded, the name is a plain attribute of ``namespace`` (the package's
    ``globals()``)."""

    def getattr_(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(lazy))

    return getattr_, dir_
