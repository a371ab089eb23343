"""One operator request over MQTT: connect, check that its target is there, send a command,
wait for its reply.

Before sending, the retained status of the target (``coordinator/status``, or the node's
``node/<id>/status``) is read, waiting at most ``status_wait_s`` (1 s) for it: the broker sends a
retained message right after the subscription is acknowledged, so its absence means nobody of that
name ever came online in this cluster (a wrong ``--cluster``, a node id that does not exist).
Then an operator gets a one-line answer within about a second instead of waiting for a reply
that cannot come:

- no status: ``no coordinator has ever been seen in cluster 'labb' on mqtt://… (check --cluster)``
- offline: ``the coordinator of cluster 'lab' on mqtt://… is offline since 12:03:05 (…)``, or
  ``… is offline: its connection was lost (its last will; …)``
- online, but no reply within the timeout: the coordinator (or node) was online and did not answer.

The first two are ``Unavailable`` (exit 69: nobody is there to ask; retrying at once will not
help), the last a TransportError (exit 75: transient).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from deepedge import compat
from deepedge.broker_schemas import (
    ArgValue,
    Cleared,
    CommandReply,
    CoordinatorStatus,
    Message,
    NodeBirth,
    NodeDeath,
    Topics,
)
from deepedge.config import Config
from deepedge.errors import DeepEdgeError, ExitCode
from deepedge.transport import MqttTransport, Received, Refused, Requester, Transport, TransportError

__all__ = [
    "STATUS_WAIT_S",
    "CommandError",
    "Unavailable",
    "coordinator_request",
    "coordinator_status",
    "node_status",
    "profile_node",
    "run_profile",
]

STATUS_WAIT_S = 1.0  # how long to wait for a retained status before concluding there is none


class CommandError(DeepEdgeError):
    """The target answered with a typed error."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class Unavailable(DeepEdgeError):
    """The coordinator or node asked for is not there: never seen in the cluster, or offline."""

    exit_code = ExitCode.UNAVAILABLE


def _when(ts: float) -> str:
    """A local time, with the date unless it is today."""
    t = time.localtime(ts)
    return time.strftime("%H:%M:%S" if t[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S", t)


async def _retained(t: Transport, topic: str, wait_s: float) -> Message | Cleared | Refused | None:
    """The retained message on ``topic`` (or one published meanwhile); None if none came within
    ``wait_s``. A payload this build cannot decode comes back as Refused."""
    async with await t.subscribe(topic, qos=1, include_refused=True) as sub:
        try:
            item = await sub.get(wait_s)
        except TimeoutError:
            return None
    return item.message if isinstance(item, Received) else item


def never_seen(config: Config) -> str:
    """What is said of a cluster whose broker holds no coordinator's status."""
    return (
        f"no coordinator has ever been seen in cluster {config.cluster.name!r} on {config.broker.url} (check --cluster)"
    )


async def coordinator_status(t: Transport, config: Config, wait_s: float = STATUS_WAIT_S) -> CoordinatorStatus | None:
    """The online coordinator's retained status; Unavailable if it was never seen or is offline.
    None if its status could not be decoded (the request is sent anyway)."""
    status = await _retained(t, Topics(config.cluster.name).coordinator_status(), wait_s)
    name, url = config.cluster.name, config.broker.url
    match status:
        case None | Cleared():
            raise Unavailable(never_seen(config))
        case CoordinatorStatus(state="offline"):
            who = f"the coordinator of cluster {name!r} on {url}"
            session = f"its session {status.session}, deepedge {status.version or '?'}"
            if status.ts:  # its own, on a clean stop
                raise Unavailable(f"{who} is offline since {_when(status.ts)} ({session})")
            # its last will: written when it connected, so it carries no time
            raise Unavailable(f"{who} is offline: its connection was lost (its last will; {session})")
        case CoordinatorStatus():
            return status
    return None


async def node_status(t: Transport, config: Config, node: str, wait_s: float = STATUS_WAIT_S) -> NodeBirth | None:
    """The node's retained birth if it is online; Unavailable if it was never seen or is
    offline. None if its status could not be decoded."""
    status = await _retained(t, Topics(config.cluster.name).node_status(node), wait_s)
    name, url = config.cluster.name, config.broker.url
    match status:
        case None | Cleared():
            raise Unavailable(
                f"no node {node!r} has ever been seen in cluster {name!r} on {url} (check the node id and --cluster)"
            )
        case NodeDeath(reason="shutdown"):
            raise Unavailable(
                f"node {node!r} of cluster {name!r} is offline since {_when(status.ts)} "
                f"(it shut down; its session {status.session})"
            )
        case NodeDeath():
            since = f" since {_when(status.ts)}" if status.ts else ""
            raise Unavailable(
                f"node {node!r} of cluster {name!r} is offline{since}: its connection was lost "
                f"(its last will; its session {status.session})"
            )
        case NodeBirth():
            return status
    return None


async def coordinator_request(
    config: Config,
    verb: str,
    args: Mapping[str, ArgValue] | None = None,
    timeout_s: float = 10.0,
    status_wait_s: float = STATUS_WAIT_S,
) -> CommandReply:
    """Send ``verb`` to the cluster's coordinator and return its (ok) reply. Unavailable when no
    coordinator is online; CommandError for a typed error reply; TransportError when the broker
    is unreachable or the coordinator does not answer within ``timeout_s``."""
    topics = Topics(config.cluster.name)
    async with MqttTransport(config.broker) as t:
        status = await coordinator_status(t, config, status_wait_s)
        async with Requester(t, topics, timeout_s=timeout_s + 5, sender="cli") as rpc:
            try:
                async with compat.timeout(timeout_s):
                    reply = await rpc.request(topics.coordinator_command(verb), dict(args or {}))
            except TimeoutError:
                who = f"the coordinator of cluster {config.cluster.name!r}"
                raise _no_answer(t, config, who, status, verb, timeout_s) from None
    return _checked(reply)


def _no_answer(
    t: Transport,
    config: Config,
    who: str,
    status: CoordinatorStatus | NodeBirth | None,
    verb: str,
    timeout_s: float,
) -> TransportError:
    if not t.connected:
        return TransportError(f"lost the connection to the broker at {config.broker.url} waiting for {verb}'s reply")
    seen = f" (online since {_when(status.ts)}, session {status.session})" if status is not None and status.ts else ""
    return TransportError(f"{who} was online{seen} but did not answer {verb} within {timeout_s:g} s")


async def profile_node(
    config: Config,
    node: str,
    args: Mapping[str, ArgValue],
    on_wait: Callable[[float], None] | None = None,
    timeout_s: float = 300.0,
    status_wait_s: float = STATUS_WAIT_S,
    reply_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Start ``profile`` on a node and wait until it is done: see :func:`run_profile`. The node's
    retained status is read first: Unavailable if it was never seen or is offline."""
    topics = Topics(config.cluster.name)
    async with MqttTransport(config.broker) as t:
        birth = await node_status(t, config, node, status_wait_s)
        async with Requester(t, topics, timeout_s=reply_timeout_s + 5, sender="cli") as rpc:
            try:
                async with compat.timeout(reply_timeout_s):
                    started = await rpc.request(topics.node_command(node, "profile"), dict(args))
            except TimeoutError:
                raise _no_answer(t, config, f"node {node!r}", birth, "profile", reply_timeout_s) from None
            return await _poll_profile(rpc, topics, node, _checked(started).result, on_wait, timeout_s)


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
    return await _poll_profile(rpc, topics, node, started, on_wait, timeout_s)


async def _poll_profile(
    rpc: Requester,
    topics: Topics,
    node: str,
    started: Mapping[str, Any],
    on_wait: Callable[[float], None] | None,
    timeout_s: float,
) -> dict[str, Any]:
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
