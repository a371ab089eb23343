"""``deepedge logs -f``: tail the cluster's events topic."""

from __future__ import annotations

import time
from collections.abc import Callable

from deepedge.broker_schemas import CoordinatorStatus, Event, Topics
from deepedge.config import Config
from deepedge.ops._console import printable
from deepedge.ops._request import STATUS_WAIT_S, _retained, never_seen
from deepedge.transport import MqttTransport, Received

__all__ = ["format_event", "tail_events"]


def format_event(e: Event) -> str:
    """One line; what came from the network has its control characters shown, not sent to the
    terminal."""
    when = time.strftime("%H:%M:%S", time.localtime(e.ts))
    where = " ".join(x for x in (f"node={e.node}" if e.node else "", f"job={e.job}" if e.job else "") if x)
    return printable(f"{when} {e.level:<7} {e.event:<18} {e.source:<16} {where} {e.message}".rstrip())


async def tail_events(
    config: Config,
    emit: Callable[[Event], None],
    *,
    node: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    notice: Callable[[str], None] | None = None,
) -> int:
    """Call ``emit`` for each matching event until cancelled (or ``limit`` events). ``notice``
    is told once when the cluster has no coordinator's status on the broker (a mistyped
    ``--cluster`` waited in silence for ever: a new operator's review); it follows anyway, a
    node's events come without one."""
    topics = Topics(config.cluster.name)
    seen = 0
    async with MqttTransport(config.broker) as t, await t.subscribe(topics.all_events(), qos=0) as sub:
        if notice is not None:
            status = await _retained(t, topics.coordinator_status(), STATUS_WAIT_S)
            if not isinstance(status, CoordinatorStatus):
                notice(f"{never_seen(config)}; following its events anyway")
        async for item in sub:
            if not isinstance(item, Received) or not isinstance(item.message, Event):
                continue
            e = item.message
            if (node and e.node != node) or (job and e.job != job):
                continue
            emit(e)
            seen += 1
            if limit is not None and seen >= limit:
                break
    return seen
