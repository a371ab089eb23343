"""One operator request over MQTT: connect, send a command, wait for its reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from deepedge.broker_schemas import ArgValue, CommandReply, Topics
from deepedge.config import Config
from deepedge.errors import DeepEdgeError, ExitCode
from deepedge.transport import MqttTransport, Requester

__all__ = ["CommandError", "coordinator_request", "profile_node", "run_profile"]


class CommandError(DeepEdgeError):
    """The target answered with a typed error."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


async def coordinator_request(
    config: Config, verb: str, args: Mapping[str, ArgValue] | None = None, timeout_s: float = 10.0
) -> CommandReply:
    topics = Topics(config.cluster.name)
    async with MqttTransport(config.broker) as t, Requester(t, topics, timeout_s=timeout_s, sender="cli") as rpc:
        reply = await rpc.request(topics.coordinator_command(verb), dict(args or {}))
    return _checked(reply)


async def profile_node(
    config: Config,
    node: str,
    args: Mapping[str, ArgValue],
    on_wait: Callable[[float], None] | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Start ``profile`` on a node and wait until it is done: see :func:`run_profile`."""
    topics = Topics(config.cluster.name)
    async with MqttTransport(config.broker) as t, Requester(t, topics, timeout_s=10, sender="cli") as rpc:
        return await run_profile(rpc, topics, node, args, on_wait, timeout_s)


async def run_profile(
    rpc: Requester,
    topics: Topics,
    node: str,
    args: Mapping[str, ArgValue],
    on_wait: Callable[[float], None] | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Start ``profile`` on a node, poll its status until the profile is done; the node's profile
    of the model (``ModelProfile`` as a dict). Raises CommandError with the node's reason."""
    started = _checked(await rpc.request(topics.node_command(node, "profile"), dict(args))).result
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        await asyncio.sleep(0.5)
        if on_wait is not None:
            on_wait(time.monotonic() - t0)
        state = _checked(await rpc.request(topics.node_command(node, "status"), {})).result["profile"]
        if not state["running"]:
            if state["last_error"]:
                raise CommandError("failed", state["last_error"])
            return dict(state["models"][started["model"]])
    raise CommandError("timeout", f"node {node} did not finish profiling within {timeout_s:g} s")


def _checked(reply: CommandReply) -> CommandReply:
    if not reply.ok:
        error = reply.error
        raise CommandError(error.code if error else "internal", error.message if error else "refused")
    return reply
