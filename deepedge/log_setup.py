"""structlog configuration, done once by entry points: JSON lines when stderr is not a TTY
(systemd/journald), a readable console on a TTY. Libraries only call ``structlog.get_logger()``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, MutableMapping
from typing import Any, Literal, TextIO

import structlog

__all__ = ["CONNECTION_EVENTS", "LEVELS", "configure_logging"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# The MQTT client's reconnect loop (deepedge.transport): a daemon's log wants every one of them; a
# one-shot command (``deepedge status``) does not: its own one-line error says what went wrong, so
# there they are debug events, shown only with ``--log-level debug``.
CONNECTION_EVENTS = frozenset(
    {"mqtt.connected", "mqtt.connect_failed", "mqtt.disconnected", "mqtt.reconnecting", "mqtt.connect_refused"}
)


def _demoted(events: frozenset[str], level: int) -> structlog.types.Processor:
    """A processor that logs ``events`` at debug level whatever level they were logged at."""

    def demote(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("event") in events:
            if level > logging.DEBUG:
                raise structlog.DropEvent
            event_dict["level"] = "debug"
        return event_dict

    return demote


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
    *,
    demote: Collection[str] = (),
) -> None:
    """``demote``: events logged at debug level instead of their own (e.g. CONNECTION_EVENTS for a
    one-shot command)."""
    out = stream or sys.stderr
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if demote:
        processors.append(_demoted(frozenset(demote), LEVELS[level]))
    structlog.configure(
        processors=[
            *processors,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Third-party stdlib logging (paho, asyncio) at warning and above, same stream.
    logging.basicConfig(stream=out, level=max(LEVELS[level], logging.WARNING), force=True)
