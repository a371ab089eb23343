"""The in-memory transport and the request/response layer on it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from deepedge.broker_schemas import (
    Cleared,
    CommandReply,
    CommandRequest,
    NodeBirth,
    NodeDeath,
    Telemetry,
    Topics,
    encode,
)
from deepedge.transport import (
    CommandFailed,
    FakeBroker,
    FakeTransport,
    Received,
    Requester,
    TransportError,
    Will,
    ok_reply,
    serve_commands,
)

T = Topics("lab")


async def test_retained_goes_to_late_subscribers_and_clearing_works() -> None:
    broker = FakeBroker()
    async with FakeTransport(broker) as pub:
        await pub.publish(T.node_status("n1"), NodeBirth(node="n1", session="s1", ts=1.0), qos=1, retain=True)
    async with FakeTransport(broker) as sub_client:
        sub = await sub_client.subscribe(T.all_nodes("status"))
        got = await sub.get(1)
        assert isinstance(got, Received) and got.retain and isinstance(got.message, NodeBirth)
        async with FakeTransport(broker) as pub:
            await pub.publish(T.node_status("n1"), None, qos=1, retain=True)
        got = await sub.get(1)
        assert isinstance(got, Received) and isinstance(got.message, Cleared)
    assert T.node_status("n1") not in broker.retained


async def test_will_published_when_client_killed() -> None:
    broker = FakeBroker()
    will = Will(T.node_status("n1"), NodeDeath(node="n1", session="s1"))
    async with FakeTransport(broker) as watcher:
        sub = await watcher.subscribe(T.all_nodes("status"))
        node = FakeTransport(broker, client_id="node-n1", will=will)
        await node.__aenter__()
        broker.kill("node-n1")
        got = await sub.get(1)
        assert isinstance(got, Received) and got.message == NodeDeath(node="n1", session="s1")
        with pytest.raises(TransportError):
            await node.publish(T.node_telemetry("n1"), Telemetry(node="n1", ts=1.0))


async def test_garbage_and_forgeries_are_dropped_not_delivered() -> None:
    broker = FakeBroker()
    async with FakeTransport(broker) as client:
        sub = await client.subscribe(T.all_nodes())
        await client.publish_raw(T.node_telemetry("n1"), b"\xc1garbage")
        await client.publish_raw(T.node_telemetry("n2"), encode(Telemetry(node="n1", ts=1.0)))  # forged
        await client.publish(T.node_telemetry("n1"), Telemetry(node="n1", ts=2.0))
        got = await sub.get(1)
        assert isinstance(got, Received) and got.message == Telemetry(node="n1", ts=2.0)
        assert client.dispatcher.drops.total == 2


async def test_subscription_queue_is_bounded() -> None:
    broker = FakeBroker()
    async with FakeTransport(broker) as client:
        sub = await client.subscribe(T.all_nodes(), maxsize=5)
        for i in range(20):
            await client.publish(T.node_telemetry("n1"), Telemetry(node="n1", ts=float(i)))
        assert sub.overflowed == 15


async def _handler(verb: str, req: CommandRequest) -> CommandReply:
    if verb == "status":
        return ok_reply(req, state="idle", echo=req.args.get("x"))
    if verb == "boom":
        raise RuntimeError("handler bug")
    raise CommandFailed("unknown_verb", f"no verb {verb!r}")


async def test_request_reply_and_typed_errors() -> None:
    broker = FakeBroker()
    async with FakeTransport(broker, client_id="node-n1") as node, FakeTransport(broker, client_id="cli-1") as cli:
        server = asyncio.create_task(serve_commands(node, T, T.node_commands("n1"), _handler, responder="n1"))
        await asyncio.sleep(0)
        async with Requester(cli, T, timeout_s=1) as rpc:
            reply = await rpc.request(T.node_command("n1", "status"), {"x": 3})
            assert reply.ok and reply.result == {"state": "idle", "echo": 3}
            reply = await rpc.request(T.node_command("n1", "fly"))
            assert not reply.ok and reply.error is not None and reply.error.code == "unknown_verb"
            reply = await rpc.request(T.node_command("n1", "boom"))
            assert not reply.ok and reply.error is not None and reply.error.code == "internal"
            assert "handler bug" in reply.error.message
            assert rpc.pending == 0
            # a malformed command whose reply address can be read gets a typed error
            sub = await cli.subscribe(T.node_replies())
            await cli.publish_raw(
                T.node_command("n1", "status"), b'{"kind":"command","request_id":"r9","reply_to":"cli-1","args":7}'
            )
            got = await sub.get(1)
            assert isinstance(got, Received) and isinstance(got.message, CommandReply)
            assert got.message.request_id == "r9" and got.message.error is not None
            assert got.message.error.code == "bad_request"
        server.cancel()


async def test_a_flood_of_malformed_commands_gets_few_error_replies_and_real_ones_still_answered() -> None:
    """Error replies to undecodable commands are limited per reply address (a burst of 10, then
    5 per second): a flood cannot make the server amplify it, and a real request is answered."""
    broker = FakeBroker()
    async with FakeTransport(broker, client_id="node-n1") as node, FakeTransport(broker, client_id="cli-2") as cli:
        server = asyncio.create_task(serve_commands(node, T, T.node_commands("n1"), _handler, responder="n1"))
        await asyncio.sleep(0)
        sub = await cli.subscribe(T.node_replies())
        bad = b'{"kind":"command","request_id":"r1","reply_to":"cli-2","args":7}'
        for _ in range(500):
            await cli.publish_raw(T.node_command("n1", "status"), bad)
        async with Requester(cli, T, timeout_s=2) as rpc:
            reply = await rpc.request(T.node_command("n1", "status"), {"x": 1})
            assert reply.ok and reply.result["echo"] == 1
        errors = 0
        while True:
            try:
                got = await sub.get(0.2)
            except TimeoutError:
                break
            if isinstance(got, Received) and isinstance(got.message, CommandReply) and got.message.request_id == "r1":
                errors += 1
        assert 1 <= errors <= 20, errors
        server.cancel()


async def test_request_times_out_and_cleans_up() -> None:
    broker = FakeBroker()
    async with FakeTransport(broker) as cli, Requester(cli, T) as rpc:
        with pytest.raises(TransportError, match="no reply"):
            await rpc.request(T.node_command("nobody", "status"), timeout_s=0.05)
        assert rpc.pending == 0


async def test_a_cancelled_wait_for_the_connection_stays_cancelled() -> None:
    """Python 3.11's asyncio.wait_for swallows a cancellation that arrives just as what it waits
    for completes: a daemon's task waiting for the broker then ignored its shutdown and the
    daemon never exited (seen: a demo coordinator SIGTERMed as its broker went away kept
    reconnecting for minutes). The transport must stay cancellable at that moment."""
    broker = FakeBroker()
    t = FakeTransport(broker, client_id="c")
    t.drop_connection()
    waiter = asyncio.create_task(t.wait_connected(5))
    await asyncio.sleep(0)  # it waits for the connection
    t._connected.set()  # the connection comes back ...
    waiter.cancel()  # ... in the same loop iteration as the shutdown
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_retained_or_repeated_command_is_not_run_again() -> None:
    """A command published with the retain flag would run again at every start of its target
    (an attacker's retained drain or submit did); a request delivered twice (QoS 1 may) or
    replayed is answered once."""
    broker = FakeBroker()
    runs: list[str] = []

    async def handler(verb: str, req: CommandRequest) -> CommandReply:
        runs.append(req.request_id)
        return ok_reply(req, n=len(runs))

    async with FakeTransport(broker, client_id="node") as node, FakeTransport(broker, client_id="cli-9") as cli:
        replies = await cli.subscribe(T.node_replies())
        req = CommandRequest(request_id="r1", reply_to="cli-9")
        await cli.publish(T.node_command("n1", "drain"), req, qos=1, retain=True)  # planted before the node starts
        server = asyncio.create_task(serve_commands(node, T, T.node_commands("n1"), handler, responder="n1"))
        await asyncio.sleep(0.05)
        assert runs == []  # the retained one is not run
        fresh = CommandRequest(request_id="r2", reply_to="cli-9")
        for _ in range(3):
            await cli.publish(T.node_command("n1", "drain"), fresh, qos=1)
        await asyncio.sleep(0.05)
        assert runs == ["r2"]
        got = await replies.get(1)
        assert isinstance(got, Received) and isinstance(got.message, CommandReply) and got.message.ok
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_a_requester_takes_its_reply_from_the_node_it_asked_only() -> None:
    """Every node answers on its one topic (``reply/node/<node>``), read by every requester that
    asked that node: a requester keeps the reply to its own request from the node it asked. A reply with its
    request id on another node's topic, a stale retained reply, and replies to other requesters
    change nothing (a node cannot read the commands of another node, so it cannot learn their ids;
    here the test does, as an attacker would need to)."""
    broker = FakeBroker()
    async with (
        FakeTransport(broker, client_id="n1") as n1,
        FakeTransport(broker, client_id="n2") as n2,
        FakeTransport(broker, client_id="cli-1") as cli,
        FakeTransport(broker, client_id="cli-2") as other,
    ):
        await n1.publish(T.reply("x", "stale", "n1"), CommandReply(request_id="stale", ok=True), qos=1, retain=True)
        commands = await n1.subscribe(T.node_commands("n1"))
        async with Requester(cli, T, timeout_s=2) as rpc, Requester(other, T, timeout_s=2) as rpc2:
            asking = asyncio.create_task(rpc.request(T.node_command("n1", "status")))
            got = await commands.get(1)
            assert isinstance(got, Received) and isinstance(got.message, CommandRequest)
            rid = got.message.request_id
            forged = CommandReply(request_id=rid, ok=True, result={"who": "n2"})
            await n2.publish(T.reply("cli-1", rid, "n2"), forged, qos=1)
            await asyncio.sleep(0.05)
            assert not asking.done() and rpc2.pending == 0
            honest = CommandReply(request_id=rid, ok=True, result={"who": "n1"})
            await n1.publish(T.reply("cli-1", rid, "n1"), honest, qos=1)
            assert (await asking).result == {"who": "n1"}
            # it reads the reply topics of the nodes it asked only: a node flooding its own does
            # not reach a session that never asked it
            assert sorted(cli._dispatcher.filters()) == [T.replies("cli-1"), T.node_reply("n1")]
            assert sorted(other._dispatcher.filters()) == [T.replies("cli-2")]
        assert cli._dispatcher.filters() == {}  # closed with the requester
