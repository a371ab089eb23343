"""The secure broker of ``deepedge deploy`` on a real Mosquitto: started from the generated
config, with the generated certificates and password files, reached through deepedge's own
transport with each user's generated deepedge.toml.

The broker also gets a loopback, ACL-less "watch" listener (tests only): a watcher on it sees
every message the broker accepted, so "the broker dropped it" is observable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from deepedge.config import BrokerConfig, ConfigError, load_config
from deepedge.deploy import DeploySpec, deploy_all, write_users
from deepedge.embedded_broker import MOSQUITTO, free_ports, stop_process, wait_listening
from deepedge.transport import MqttTransport, Subscription, TransportError

pytestmark = pytest.mark.mosquitto
ROOT = Path(__file__).resolve().parent.parent
C = "deepedge/lab"  # the deployed cluster's prefix


@dataclass
class SecureBroker:
    out: Path
    spec: DeploySpec
    watch_port: int
    proc: subprocess.Popen[bytes]

    def broker(self, user: str, **changes: object) -> BrokerConfig:
        """``user``'s broker section from its generated deepedge.toml, with short timeouts."""
        cfg = load_config(self.out / "clients" / user / "deepedge.toml", environ={}).config.broker
        return msgspec.structs.replace(cfg, connect_timeout_s=3.0, keepalive_s=5, **changes)

    def daemon(self, user: str) -> MqttTransport:
        return MqttTransport(self.broker(user), identity_client_id=True)

    def watcher(self) -> MqttTransport:
        return MqttTransport(BrokerConfig(url=f"mqtt://127.0.0.1:{self.watch_port}", connect_timeout_s=3.0))

    @property
    def ca_file(self) -> str:
        return str(self.out / "mosquitto" / "ca.crt")


@contextmanager
def secure_broker(work: Path, *, client_certs: bool = False) -> Iterator[SecureBroker]:
    """``deepedge deploy all`` for a two-node cluster under ``work``, and Mosquitto started from
    what it wrote (the generated deepedge.conf included from a conf.d, as on a Debian broker)."""
    if MOSQUITTO is None or shutil.which("mosquitto_passwd") is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; CI must install it (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    out = work / "deploy"
    daemon_port, operator_port, watch = free_ports(3)
    spec = DeploySpec(
        cluster="lab",
        nodes=("orin-1", "nano-2"),
        operators=("alice", "bob"),
        broker_hosts=("localhost", "127.0.0.1"),
        daemon_port=daemon_port,
        operator_port=operator_port,
        bind_address="127.0.0.1",
        broker_dir=str(out / "mosquitto"),
        client_dir=str(out / "clients" / "{user}"),
        client_certs=client_certs,
    )
    deploy_all(spec, out)
    confd = work / "conf.d"
    confd.mkdir()
    shutil.copy(out / "mosquitto" / "deepedge.conf", confd / "deepedge.conf")
    (work / "data").mkdir()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\n"
        f"persistence_location {work / 'data'}/\n"
        f"log_dest file {work / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        f"include_dir {confd}\n"
        f"listener {watch} 127.0.0.1\nallow_anonymous true\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not all(wait_listening(p, 10.0) for p in (spec.daemon_port, spec.operator_port, watch)):
            pytest.fail(f"mosquitto did not start: {(work / 'mosquitto.log').read_text()}")
        yield SecureBroker(out, spec, watch, proc)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    with secure_broker(tmp_path_factory.mktemp("secure")) as broker:
        yield broker


@pytest.fixture
async def watcher(secure: SecureBroker) -> AsyncIterator[Subscription]:
    """Every message the broker accepted on the cluster's topics (and on another cluster's)."""
    async with secure.watcher() as w, await w.subscribe("deepedge/#", include_refused=True) as sub:
        await asyncio.sleep(0.1)
        yield sub


async def topics_until(sub: Subscription, marker: str, timeout: float = 5.0) -> list[str]:
    """The topics ``sub`` receives up to and including ``marker`` (published last, QoS 1: the
    broker delivers one publisher's messages in order, so anything before it has arrived)."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1] != marker:
            seen.append((await sub.get()).raw_topic)
    return seen


async def test_a_node_connects_over_tls_as_itself(secure: SecureBroker, watcher: Subscription) -> None:
    broker = secure.broker("orin-1")
    assert broker.tls and broker.username == "orin-1" and broker.ca_file.endswith("clients/orin-1/ca.crt")
    async with secure.daemon("orin-1") as node:
        assert node.client_id == "orin-1"  # the id the broker gives it, and its reply topics use
        await node.publish_raw(f"{C}/node/orin-1/telemetry", b"t", qos=1)
        assert await topics_until(watcher, f"{C}/node/orin-1/telemetry") == [f"{C}/node/orin-1/telemetry"]


async def test_a_node_cannot_speak_for_another_node_cluster_or_requester(
    secure: SecureBroker, watcher: Subscription
) -> None:
    forged = [
        f"{C}/node/nano-2/telemetry",  # another node's topics
        f"{C}/node/nano-2/status",
        f"{C}/events/node/nano-2",  # another node's events
        f"{C}/events/coordinator",
        f"{C}/reply/node/nano-2",  # a reply in another node's name
        f"{C}/reply/deepedge-0123456789ab/coordinator/r1",  # ... or in the coordinator's
        f"{C}/reply/deepedge-0123456789ab/node/orin-1/r1",  # the reply topics before 2026-12-06: a node
        f"{C}/reply/x/node/orin-1/y",  # could retain on as many of them as it liked
        f"{C}/job/j1/plan",  # the coordinator's topics
        f"{C}/coordinator/status",
        f"{C}/cmd/node/nano-2/drain",  # commands
        f"{C}/cmd/coordinator/submit",
        "deepedge/other/node/orin-1/telemetry",  # another cluster, even under its own id
        "deepedge/other/events/node/orin-1",
    ]
    own = [f"{C}/events/node/orin-1", f"{C}/reply/node/orin-1", f"{C}/node/orin-1/status"]
    async with secure.daemon("orin-1") as node:
        for topic in forged + own:
            await node.publish_raw(topic, b"x", qos=1)
        assert await topics_until(watcher, own[-1]) == own


async def test_a_node_can_retain_on_a_fixed_handful_of_topics_only(secure: SecureBroker) -> None:
    """Mosquitto has no quota on retained messages: a node may retain on every topic it may
    write. Its reply topics used to be ``reply/+/node/<node>/+`` (any requester, any request
    id): 300 retained publishes of 64 KiB took a broker from 8.6 to 29 MB (attacker review).
    Now a node writes exact topics only, so however many it tries, what it leaves retained is
    at most one message on each of them."""
    payload = b"x" * 1024
    async with secure.daemon("nano-2") as node:
        for i in range(50):
            for topic in (f"{C}/reply/c{i}/node/nano-2/r{i}", f"{C}/reply/node/nano-2", f"{C}/events/node/nano-2"):
                await node.publish_raw(topic, payload, qos=1, retain=True)
        await node.publish_raw(f"{C}/node/nano-2/status", b"", qos=1, retain=True)  # a marker it may write
    retained: set[str] = set()
    async with secure.watcher() as w, await w.subscribe(f"{C}/#", include_refused=True) as sub:
        with contextlib.suppress(TimeoutError):
            while True:
                item = await sub.get(1.0)
                retained.add(item.raw_topic)
    theirs = {t for t in retained if "nano-2" in t}
    assert theirs == {f"{C}/reply/node/nano-2", f"{C}/events/node/nano-2"}, sorted(theirs)[:10]
    async with secure.daemon("nano-2") as node:  # (clean up for the module's other tests)
        for topic in theirs:
            await node.publish_raw(topic, b"", qos=1, retain=True)


async def test_a_node_reads_its_own_commands_and_the_plans_only(secure: SecureBroker) -> None:
    async with (
        secure.watcher() as w,
        secure.daemon("orin-1") as node,
        await node.subscribe(f"{C}/cmd/node/+/+", include_refused=True) as cmds,
        await node.subscribe(f"{C}/job/+/+", include_refused=True) as jobs,
    ):
        await asyncio.sleep(0.2)
        for topic in (f"{C}/cmd/node/nano-2/drain", f"{C}/job/j1/progress", f"{C}/cmd/node/orin-1/status"):
            await w.publish_raw(topic, b"x", qos=1)
        await w.publish_raw(f"{C}/job/j1/plan", b"x", qos=1)
        assert (await cmds.get(3)).raw_topic == f"{C}/cmd/node/orin-1/status"
        assert (await jobs.get(3)).raw_topic == f"{C}/job/j1/plan"
        with pytest.raises(TimeoutError):
            await cmds.get(0.3)


async def test_the_coordinator_owns_jobs_and_cannot_speak_for_a_node(
    secure: SecureBroker, watcher: Subscription
) -> None:
    allowed = [
        f"{C}/job/j1/plan",
        f"{C}/coordinator/status",
        f"{C}/cmd/node/orin-1/status",
        f"{C}/reply/deepedge-0123456789ab/coordinator/r1",
        f"{C}/events/coordinator",
    ]
    forged = [
        f"{C}/node/orin-1/telemetry",
        f"{C}/events/node/orin-1",
        f"{C}/reply/node/orin-1",
        "deepedge/o/job/j/plan",
    ]
    async with secure.daemon("coordinator") as coord:
        assert coord.client_id == "coordinator"
        for topic in forged + allowed:
            await coord.publish_raw(topic, b"x", qos=1)
        assert await topics_until(watcher, allowed[-1]) == allowed


async def test_a_client_without_credentials_or_with_a_wrong_password_is_refused(secure: SecureBroker) -> None:
    anonymous = secure.broker("orin-1", username="", password="")
    with pytest.raises(ConfigError, match=r"requires credentials: set broker\.username"):
        async with MqttTransport(anonymous):
            pass
    with pytest.raises(ConfigError, match="refused user 'orin-1'"):
        async with MqttTransport(secure.broker("orin-1", password="guess")):
            pass
    wrong_listener = secure.broker("alice", url=f"mqtts://localhost:{secure.spec.daemon_port}")
    with pytest.raises(ConfigError, match="refused user 'alice'"):  # operators are not daemons
        async with MqttTransport(wrong_listener):
            pass


async def test_a_client_id_takeover_of_a_node_is_refused(secure: SecureBroker) -> None:
    async with (
        secure.daemon("orin-1") as node,
        await node.subscribe(f"{C}/cmd/node/orin-1/+", include_refused=True) as cmds,
    ):
        # another node's credential asking for orin-1's id gets its own id (its username) instead
        async with MqttTransport(secure.broker("nano-2"), client_id="deepedge-orin-1") as intruder:
            await intruder.publish_raw(f"{C}/node/nano-2/status", b"x", qos=1)
        # an operator cannot ask for a daemon's id at all: every id must start with deepedge-
        with pytest.raises(ConfigError, match=r"with client id 'orin-1'.*admits only client ids that start with"):
            async with MqttTransport(secure.broker("alice"), client_id="orin-1"):
                pass
        async with MqttTransport(secure.broker("alice"), client_id="deepedge-orin-1") as op:
            await op.publish_raw(f"{C}/cmd/node/orin-1/status", b"x", qos=1)
            assert (await cmds.get(3)).raw_topic == f"{C}/cmd/node/orin-1/status"
        await asyncio.sleep(0.2)
        assert node.connected and node.connects == 1  # never kicked off


async def test_plaintext_to_the_tls_port_fails_with_a_clear_message(secure: SecureBroker) -> None:
    plain = secure.broker("orin-1", url=f"mqtt://127.0.0.1:{secure.spec.daemon_port}")
    with pytest.raises(ConfigError) as err:
        async with MqttTransport(plain):
            pass
    assert "closed the connection during the MQTT handshake: is it a TLS port? use mqtts://" in str(err.value)
    tls_to_plain = secure.broker("orin-1", url=f"mqtts://localhost:{secure.watch_port}")
    with pytest.raises(ConfigError, match="is it a plaintext port"):
        async with MqttTransport(tls_to_plain):
            pass
    untrusted = secure.broker("orin-1", ca_file="")  # the system's CA store does not know the cluster's CA
    with pytest.raises(ConfigError, match="is not trusted by the system's CA store"):
        async with MqttTransport(untrusted):
            pass


def test_the_cli_says_so_in_one_line_and_exits_78(secure: SecureBroker) -> None:
    toml = secure.out / "clients" / "alice" / "deepedge.toml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = {
        f"mqtt://127.0.0.1:{secure.spec.operator_port}": "is it a TLS port? use mqtts://",
        "mqtt://192.0.2.1:1883": "plaintext to a host that is not this machine",
    }
    for url, needle in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "deepedge", "--config", str(toml), "--broker", url, "status"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 78, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deepedge: error: ") and needle in lines[0], proc.stderr


async def test_an_operator_commands_and_reads_the_coordinators_replies_to_it_only(
    secure: SecureBroker, watcher: Subscription
) -> None:
    """An operator reads the coordinator's replies to its own session only, and every node's
    replies (a node answers on one exact topic since 2026-12-06, so that it cannot retain on
    any number of reply topics; operators are trusted, docs/security.md)."""
    async with (
        secure.daemon("orin-1") as node,
        await node.subscribe(f"{C}/cmd/node/orin-1/+", include_refused=True) as cmds,
        secure.daemon("coordinator") as coord,
        MqttTransport(secure.broker("alice")) as alice,
        MqttTransport(secure.broker("bob")) as bob,
        await alice.subscribe(f"{C}/reply/{alice.client_id}/#", include_refused=True) as mine,
        MqttTransport(secure.broker("alice")) as alice2,
        await alice2.subscribe(f"{C}/reply/node/+", include_refused=True) as nodes,
        # (each of bob's subscriptions on its own client: a client hands what it receives to
        # every local subscription that matches, so the broker's filtering shows per client)
        MqttTransport(secure.broker("bob")) as bob2,
        MqttTransport(secure.broker("bob")) as bob3,
        await bob.subscribe(f"{C}/reply/{alice.client_id}/#", include_refused=True) as alices,
        await bob2.subscribe(f"{C}/reply/#", include_refused=True) as everyone,
        await bob3.subscribe(f"{C}/cmd/#", include_refused=True) as commands,
    ):
        assert alice.client_id.startswith("deepedge-") and len({alice.client_id, bob.client_id, bob2.client_id}) == 3
        await asyncio.sleep(0.2)
        await alice.publish_raw(f"{C}/cmd/node/orin-1/status", b"x", qos=1)
        assert (await cmds.get(3)).raw_topic == f"{C}/cmd/node/orin-1/status"
        await node.publish_raw(f"{C}/reply/node/orin-1", b"x", qos=1)
        await coord.publish_raw(f"{C}/reply/{alice.client_id}/coordinator/r2", b"x", qos=1)
        assert (await nodes.get(3)).raw_topic == f"{C}/reply/node/orin-1"
        assert (await mine.get(3)).raw_topic == f"{C}/reply/{alice.client_id}/coordinator/r2"
        assert (await everyone.get(3)).raw_topic == f"{C}/reply/node/orin-1"  # every operator reads the nodes'
        for sub in (alices, everyone, commands):  # another operator sees nothing else of it
            with pytest.raises(TimeoutError):
                await sub.get(0.2)
        # an operator cannot speak for a node, the coordinator or in another cluster
        forged = [f"{C}/node/orin-1/status", f"{C}/job/j1/plan", f"{C}/events/coordinator", "deepedge/o/cmd/node/x/y"]
        for topic in forged:
            await alice.publish_raw(topic, b"x", qos=1)
        await alice.publish_raw(f"{C}/cmd/coordinator/status", b"x", qos=1)
        seen = await topics_until(watcher, f"{C}/cmd/coordinator/status")
        assert not set(forged) & set(seen), seen


async def test_a_node_left_out_is_cut_off_when_the_broker_reloads(tmp_path: Path) -> None:
    """Revoking a board: deploy again without it, and reload Mosquitto (SIGHUP,
    ``systemctl reload mosquitto``): its connection is closed and it cannot come back."""
    with secure_broker(tmp_path) as secure:
        async with secure.daemon("nano-2") as node, secure.daemon("orin-1") as other:
            write_users(dataclasses.replace(secure.spec, nodes=("orin-1",)), secure.out)
            secure.proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(5):
                while node.connected:
                    await asyncio.sleep(0.05)
            with pytest.raises(TransportError, match="refused user 'nano-2'"):
                await node.publish_raw(f"{C}/node/nano-2/status", b"x", qos=1)
            assert other.connected and other.connects == 1


async def test_with_client_certificates_a_password_alone_is_not_enough(tmp_path: Path) -> None:
    with secure_broker(tmp_path, client_certs=True) as secure:
        with_cert = secure.broker("orin-1")
        assert with_cert.cert_file.endswith("clients/orin-1/client.crt")
        async with MqttTransport(with_cert, identity_client_id=True) as node:
            assert node.connected
        without = secure.broker("orin-1", cert_file="", key_file="")
        with pytest.raises(ConfigError, match="does it require a client certificate"):
            async with MqttTransport(without):
                pass
