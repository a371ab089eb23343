"""Readiness in integration tests: a matching message on a subscription, a condition polled
until it holds, a node that answers, a coordinator that lists its nodes — instead of sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from deepedge.broker_schemas import Topics
from deepedge.config import Config
from deepedge.errors import DeepEdgeError
from deepedge.ops import coordinator_request
from deepedge.transport import Requester, Subscription, Transport, TransportError


async def wait_for(sub: Subscription, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """``sub.first``, failing the test (AssertionError) rather than erroring on a timeout."""
    try:
        return await sub.first(pred, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"expected message did not arrive: {exc}") from None


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll ``check`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(every)


async def node_answers(transport: Transport, topics: Topics, node: str, timeout: float = 15.0) -> None:
    """Until ``node``'s daemon answers its ``status`` command (it serves its commands)."""

    async def answers() -> bool:
        async with Requester(transport, topics, timeout_s=1.0) as rpc:
            try:
                return (await rpc.request(topics.node_command(node, "status"))).ok
            except TransportError:
                return False

    await until(answers, timeout, f"node {node} answers its commands")


async def coordinator_lists(config: Config, nodes: Iterable[str], timeout: float = 20.0) -> None:
    """Until the coordinator's ``status`` lists every one of ``nodes`` alive and with telemetry
    (it can plan with them)."""
    want = set(nodes)

    async def listed() -> bool:
        try:
            status = (await coordinator_request(config, "status", timeout_s=2.0)).result
        except DeepEdgeError:
            return False
        ready = {n["node"] for n in status["nodes"] if n["alive"] and n["cpu_percent"] is not None}
        return want <= ready

    await until(listed, timeout, f"the coordinator lists {sorted(want)} alive with telemetry", every=0.2)
