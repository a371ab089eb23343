"""A child process's answer on its stdout pipe, read without blocking past a deadline: the
training profiler's JSON lines (``_runner``) and the GPU stressor's ``ready`` (``_gpu_stressor``)."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import IO, TypeVar

__all__ = ["first_line"]

T = TypeVar("T")


def first_line(
    out: IO[bytes], timeout_s: float, accept: Callable[[bytes], T | None], max_bytes: int = 1 << 20
) -> T | None:
    """The value ``accept`` makes of the first line it takes (the line without its newline);
    lines it turns down (None) are skipped. Read byte by byte, so nothing past that line's
    newline is taken from the pipe (the next read gets the next line) and a partial line never
    blocks; a line keeps its last ``max_bytes``. None when the pipe ends or nothing is taken
    within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    line = b""
    while time.monotonic() < deadline:
        if not select.select([out], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        chunk = os.read(out.fileno(), 1)
        if not chunk:
            return None  # it exited
        if chunk != b"\n":
            line = (line + chunk)[-max_bytes:]
            continue
        value = accept(line)
        if value is not None:
            return value
        line = b""
    return None
