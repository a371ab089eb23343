"""One operator request over MQTT: connect, send a command, wait for its reply."""

from __future__ import annotations

from collections.abc import Mapping

from deepedge.broker_schemas import ArgValue, CommandReply, Topics
from deepedge.config import Config
from deepedge.errors import DeepEdgeError
from deepedge.transport import MqttTransport, Requester

__all__ = ["CommandError", "coordinator_request"]


class CommandError(DeepEdgeError):
    """The target answered with a typed error."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


async def coordinator_request(
    config: Config, verb: str, args: Mapping[str, ArgValue] | None = None, timeout_s: float = 10.0
) -> CommandReply:
    topics = Topics(config.cluster.name)
    async with MqttTransport(config.broker) as t, Requester(t, topics, timeout_s=timeout_s, sender="cli") as rpc:
        reply = await rpc.request(topics.coordinator_command(verb), dict(args or {}))
    if not reply.ok:
        error = reply.error
        raise CommandError(error.code if error else "internal", error.message if error else "refused")
    return reply
