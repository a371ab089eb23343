"""What Python 3.11 added that deepedge uses, on Python 3.10 too (JetPack 6's system Python,
docs/jetson.md): ``tomllib`` (``tomli``), ``StrEnum``, ``Self`` (``typing_extensions``) and
``timeout`` — the cancellation-safe ``asyncio.timeout`` that deepedge uses instead of
``asyncio.wait_for`` (``async_timeout`` on 3.10, whose ``asyncio.TimeoutError`` is turned into the
builtin ``TimeoutError`` that 3.11 raises, so ``except TimeoutError`` means the same on both).

Only this module knows the version; CI checks the package against 3.10 statically (ruff's
``target-version = py310``, ``mypy --python-version 3.10``), and the 3.10 replacements are
tested on whichever Python runs the tests (``StrEnum310``, ``timeout310``)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from collections.abc import AsyncIterator

__all__ = ["Self", "StrEnum", "StrEnum310", "timeout", "timeout310", "tomllib"]


class StrEnum310(str, enum.Enum):
    """``enum.StrEnum`` of 3.11: members are strings and print as their value."""

    def __str__(self) -> str:
        return str(self.value)


@contextlib.asynccontextmanager
async def timeout310(delay: float | None) -> AsyncIterator[None]:
    """``asyncio.timeout`` of 3.11, on ``async_timeout``."""
    import async_timeout

    try:
        async with async_timeout.timeout(delay):
            yield
    except asyncio.TimeoutError as exc:
        raise TimeoutError(str(exc) or "timed out") from exc


if sys.version_info >= (3, 11):
    from asyncio import timeout
    from enum import StrEnum
    from typing import Self

    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
    from typing_extensions import Self

    StrEnum = StrEnum310
    timeout = timeout310
