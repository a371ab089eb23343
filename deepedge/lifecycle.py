"""One lifecycle for both daemons (``deepedge node`` and ``deepedge coordinator``):

- connect with the last will given to the transport, keep reconnecting with backoff; the rule for
  a broker that is down at start: keep trying (systemd shows "reconnecting", every failure is
  logged with the broker URL and the error), except a failure the broker will repeat every time —
  TLS to a plaintext port, an untrusted certificate, refused credentials — which ends the daemon
  at once with exit 78 (configuration error: systemd does not restart it);
- on every connection run ``on_connect`` (a birth, an online status, reconciliation); on the first
  one tell systemd READY;
- run the daemon's loops; every one of them is watched: one that ends or raises ends the daemon
  (its exception is re-raised: exit 1, systemd restarts it), nothing dies unseen;
- on SIGTERM/SIGINT: cancel the loops (``cancel_and_wait``), then ``goodbye`` (publish an offline
  status or a death notice, bounded by ``goodbye_timeout_s``), then leave the broker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog

from deepedge import compat
from deepedge.sdnotify import SystemdNotifier
from deepedge.tasks import cancel_and_wait
from deepedge.transport import MqttTransport

__all__ = ["run_daemon"]

log = structlog.get_logger("deepedge.lifecycle")


async def run_daemon(
    name: str,
    transport: MqttTransport,
    loops: Sequence[Callable[[], Coroutine[Any, Any, Any]]],
    *,
    on_connect: Callable[[], Awaitable[None]],
    goodbye: Callable[[], Awaitable[None]],
    ready: str,
    notifier: SystemdNotifier | None = None,
    goodbye_timeout_s: float = 5.0,
) -> int:
    """Run a daemon until a signal (0) or until one of its loops fails (its exception)."""
    notifier = notifier or SystemdNotifier()
    first = asyncio.Event()

    async def connected() -> None:
        await on_connect()
        if not first.is_set():
            first.set()
            notifier.ready(ready)
            log.info(f"{name}.ready", status=ready)

    transport.add_connect_hook(connected)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    crashed: BaseException | None = None
    try:
        async with transport:
            tasks = [asyncio.create_task(f(), name=f"{name}:{getattr(f, '__name__', 'loop')}") for f in loops]
            tasks.append(asyncio.create_task(transport.wait_closed(), name=f"{name}:mqtt"))
            if notifier.watchdog_interval_s:
                tasks.append(asyncio.create_task(notifier.watchdog_loop(), name=f"{name}:watchdog"))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopping and not t.cancelled():
                    crashed = t.exception() or RuntimeError(f"{t.get_name()} ended")
                    log.error(f"{name}.loop_ended", loop=t.get_name(), error=repr(crashed))
                    break
            stuck = await cancel_and_wait([*tasks, stopping])
            if stuck:
                log.warning(f"{name}.tasks_stuck", tasks=sorted(t.get_name() for t in stuck))
            for t in tasks:  # every outcome retrieved: nothing logged as "never retrieved" at exit
                if t.done() and not t.cancelled():
                    t.exception()
            notifier.stopping()
            try:
                async with compat.timeout(goodbye_timeout_s):
                    await goodbye()
            except TimeoutError:
                log.warning(f"{name}.goodbye_unsent", error="timed out")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        notifier.close()
    if crashed is not None:
        raise crashed
    log.info(f"{name}.stopped")
    return 0
