"""``deepedge coordinator``: the service's lifecycle (connect with a last will, resume jobs from
SQLite, run until SIGTERM)."""

from __future__ import annotations

import asyncio
import signal

import structlog

from deepedge.config import Config
from deepedge.coordinator._commands import handle_command
from deepedge.coordinator._service import Coordinator
from deepedge.coordinator._store import JobStore
from deepedge.node import SystemdNotifier
from deepedge.tasks import cancel_and_wait
from deepedge.transport import MqttTransport, TransportError, Will, serve_commands

__all__ = ["run_coordinator"]

log = structlog.get_logger("deepedge.coordinator")


async def run_coordinator(config: Config) -> int:
    store = await asyncio.to_thread(JobStore, config.coordinator.db)
    notifier = SystemdNotifier()
    transport = MqttTransport(
        config.broker,
        client_id=f"deepedge-coordinator-{config.cluster.name}"[:64],
        identity_client_id=True,
        persistent=True,
        wait_first_connect=False,
    )
    c = Coordinator(config, transport, store)
    transport._will = Will(c.topics.coordinator_status(), c.status_message("offline"))
    first = asyncio.Event()

    async def on_connect() -> None:
        await transport.publish(c.topics.coordinator_status(), c.status_message(), qos=1, retain=True)
        if not first.is_set():
            first.set()
            notifier.ready(f"coordinator of {config.cluster.name}")
            log.info("coordinator.ready", cluster=config.cluster.name, jobs=len(c.jobs), db=config.coordinator.db)

    transport.add_connect_hook(on_connect)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with transport:
        tasks = [
            asyncio.create_task(c.ingest_loop()),
            asyncio.create_task(c.plan_watch_loop()),
            asyncio.create_task(c.tick_loop()),
            asyncio.create_task(
                serve_commands(
                    transport, c.topics, c.topics.coordinator_commands(), lambda verb, req: handle_command(c, verb, req)
                )
            ),
        ]
        if notifier.watchdog_interval_s:  # (a task that returns would end the service: see the wait below)
            tasks.append(asyncio.create_task(notifier.watchdog_loop()))
        done_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, done_wait], return_when=asyncio.FIRST_COMPLETED)
        stuck = await cancel_and_wait([*tasks, done_wait])
        if stuck:
            log.warning("coordinator.tasks_stuck", tasks=sorted(t.get_name() for t in stuck))
        for t in tasks:  # every outcome retrieved: nothing logged as "never retrieved" at exit
            if t.done() and not t.cancelled():
                t.exception()
        crashed = [t for t in done if t is not done_wait and not t.cancelled() and t.exception() is not None]
        notifier.stopping()
        if transport.connected:
            try:
                async with asyncio.timeout(5):
                    await transport.publish(
                        c.topics.coordinator_status(), c.status_message("offline"), qos=1, retain=True
                    )
            except (TransportError, TimeoutError) as exc:
                log.warning("coordinator.offline_unsent", error=str(exc) or "timed out")
    store.close()
    notifier.close()
    if crashed:
        raise crashed[0].exception()  # type: ignore[misc]
    return 0
