"""Rich output that stays whole outside a terminal.

On a terminal, rich does what it does: colours, tables fitted to the window. Elsewhere (CI logs,
``| tee``, journald, a file) a console has no real width (rich assumes 80 columns), and fitting to
it broke lines in the middle of a value and cut table cells short (``deadl…``). There:

- ``say`` prints a line unwrapped (the reader's pager or log viewer wraps it, or not);
- ``show`` renders a table (any renderable) at its natural width, never cropped or squeezed;
- no colour codes (rich writes none when the output is not a terminal).

Text that comes from outside (a node's or job's name, a failure reason, a note, a path) goes
through ``rich.markup.escape`` (``esc``) before it is part of markup: a reason containing ``[/]``
would otherwise crash the rendering, and ``pip install 'deepedge[vision]'`` would lose its
``[vision]``.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segment, Segments

__all__ = [
    "esc",
    "make_console",
    "printable",
    "say",
    "show",
]

_UNBOUNDED = 10_000  # columns a renderable may take outside a terminal (its natural width is less)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value: Any) -> str:
    """``value`` as text with no terminal control characters: a name, a reason or an event's
    message comes from the network, and an escape sequence in it must not retitle the
    operator's terminal, write its clipboard (OSC 52) or fake a log line (a carriage return).
    Each control character shows as a backslash, x and its two hex digits."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def esc(value: Any) -> str:
    """``value`` as text that rich prints as is (markup escaped, control characters shown)."""
    return escape(printable(value))


def make_console(*, stderr: bool = False) -> Console:
    """The CLI's console on stdout (or stderr); use it with ``say`` and ``show``."""
    return Console(stderr=stderr, highlight=False)


def say(console: Console, text: str) -> None:
    """Print one line of markup (escape what comes from outside with ``esc``); unwrapped when
    the console is not a terminal."""
    console.print(text, soft_wrap=not console.is_terminal)


def show(console: Console, renderable: RenderableType) -> None:
    """Print a table (or any renderable): on a terminal as rich fits it to the window, elsewhere
    at its natural width, whatever the console's width."""
    if console.is_terminal:
        console.print(renderable)
        return
    options = console.options.update(width=_UNBOUNDED, max_width=_UNBOUNDED)
    width = Measurement.get(console, options, renderable).maximum
    lines = console.render_lines(renderable, options.update(width=width, max_width=width), pad=False)
    for line in lines:  # (titles are padded to the table's width: trailing blanks go)
        while line and not line[-1].text.strip() and not line[-1].control:
            line.pop()
        if line and line[-1].text != line[-1].text.rstrip():
            last = line.pop()
            line.append(Segment(last.text.rstrip(), last.style, last.control))
        console.print(Segments([*line, Segment.line()]), soft_wrap=True)
