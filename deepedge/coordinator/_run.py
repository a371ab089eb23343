"""``deepedge coordinator``: the service's lifecycle (``deepedge.lifecycle``): connect with a last
will (offline status), on every connection say online and reconcile the broker with the store,
run the writer and the loops that feed it, answer commands, and say offline on SIGTERM."""

from __future__ import annotations

import asyncio
import uuid

import structlog

from deepedge import __version__
from deepedge.broker_schemas import CoordinatorStatus, Topics
from deepedge.config import Config
from deepedge.coordinator._commands import handle_command
from deepedge.coordinator._service import Coordinator
from deepedge.coordinator._store import JobStore
from deepedge.lifecycle import run_daemon
from deepedge.profiling._forecast import warm_up
from deepedge.transport import MqttTransport, TransportError, Will, serve_commands

__all__ = ["run_coordinator"]

log = structlog.get_logger("deepedge.coordinator")


async def _warm_up() -> None:
    """Load the forecast's statsmodels before saying online (about a second of CPU): otherwise
    the first job planned with a forecast pays it, on the event loop, at nice 0, while its
    workers start beside the LC apps (docs/benchmarks/lc-scenarios.md)."""
    try:
        cpu_s = await asyncio.to_thread(warm_up)
    except Exception as exc:  # a forecast that cannot load fails where it is used, with its reason
        log.warning("coordinator.forecast_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
    else:
        log.info("coordinator.forecast_loaded", cpu_s=round(cpu_s, 2))


async def run_coordinator(config: Config) -> int:
    store = await asyncio.to_thread(JobStore, config.coordinator.db)
    session = uuid.uuid4().hex[:16]
    offline = CoordinatorStatus(state="offline", session=session, version=__version__)
    transport = MqttTransport(
        config.broker,
        client_id=f"deepedge-coordinator-{config.cluster.name}"[:64],
        identity_client_id=True,
        will=Will(Topics(config.cluster.name).coordinator_status(), offline),
        persistent=True,
        wait_first_connect=False,
        exit_on_config_error=True,
    )
    c = Coordinator(config, transport, store, session=session)
    await _warm_up()

    async def on_connect() -> None:
        await transport.publish(c.topics.coordinator_status(), c.status_message(), qos=1, retain=True)
        c.offer(c.reconcile)  # the broker follows the store (a unit of the writer)

    async def serve() -> None:
        await serve_commands(
            transport, c.topics, c.topics.coordinator_commands(), lambda verb, req: handle_command(c, verb, req)
        )

    async def goodbye() -> None:
        if transport.connected:
            try:
                await transport.publish(c.topics.coordinator_status(), c.status_message("offline"), qos=1, retain=True)
            except TransportError as exc:
                log.warning("coordinator.offline_unsent", error=str(exc))

    try:
        return await run_daemon(
            "coordinator",
            transport,
            [c.writer_loop, c.ingest_loop, c.plan_watch_loop, c.tick_loop, serve],
            on_connect=on_connect,
            goodbye=goodbye,
            ready=f"coordinator of {config.cluster.name}, {len(c.jobs)} jobs in {config.coordinator.db}",
        )
    finally:
        c.close()
        store.close()
