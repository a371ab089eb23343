"""Boards that answer the coordinator's commands on the in-memory broker, for tests of the
coordinator without node daemons."""

from __future__ import annotations

from collections.abc import Callable

from deepedge.broker_schemas import CommandRequest, Topics
from deepedge.transport import FakeBroker, FakeTransport, Received, ok_reply

__all__ = ["answer_preflights"]


async def answer_preflights(
    broker: FakeBroker, topics: Topics, verdict: Callable[[str, CommandRequest], str] | None = None
) -> None:
    """Answer every node's ``preflight`` on ``broker`` until cancelled: ok, or refused with the
    reason ``verdict(node, request)`` returns (empty: ok)."""
    async with (
        FakeTransport(broker, client_id="fake-boards") as t,
        await t.subscribe(f"{topics.prefix}/cmd/node/+/preflight") as sub,
    ):
        async for item in sub:
            if not isinstance(item, Received) or not isinstance(item.message, CommandRequest):
                continue
            req, node = item.message, item.topic.node
            assert node is not None
            why = verdict(node, req) if verdict is not None else ""
            reply = ok_reply(req, ok=not why, reason=why)
            await t.publish(topics.reply(req.reply_to, req.request_id, node), reply, qos=1)
