"""deepedge refuses an insecure remote broker (plaintext, or without credentials) unless
``broker.allow_insecure``; loopback stays easy. And the daemons' client id is their username."""

from __future__ import annotations

import pytest

from deepedge.config import BrokerConfig, ConfigError, load_config
from deepedge.errors import ExitCode
from deepedge.transport import MqttTransport


@pytest.mark.parametrize(
    "url",
    ["mqtt://127.0.0.1:1883", "mqtt://127.3.4.5", "mqtt://localhost:1", "mqtt://LOCALHOST", "mqtt://[::1]:1883"],
)
def test_loopback_needs_neither_tls_nor_credentials(url: str) -> None:
    b = BrokerConfig(url=url)
    assert b.loopback and b.insecure_reason() is None
    MqttTransport(b)  # no error


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"url": "mqtt://10.0.0.2:1883"}, "plaintext to a host that is not this machine"),
        ({"url": "mqtt://mqtt.lab", "username": "n1", "password": "p"}, "plaintext"),
        ({"url": "mqtt://[::ffff:10.0.0.2]"}, "plaintext"),
        ({"url": "mqtts://mqtt.lab"}, "without credentials"),
        ({"url": "mqtts://mqtt.lab", "password": "p"}, "without credentials"),
    ],
)
def test_a_remote_broker_needs_tls_and_credentials(changes: dict[str, str], needle: str) -> None:
    b = BrokerConfig(**changes)  # type: ignore[arg-type]
    reason = b.insecure_reason()
    assert reason is not None and needle in reason and "broker.allow_insecure = true" in reason
    with pytest.raises(ConfigError) as err:
        MqttTransport(b)
    assert str(err.value) == reason and "\n" not in reason
    assert err.value.exit_code is ExitCode.CONFIG
    assert BrokerConfig(**changes, allow_insecure=True).insecure_reason() is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "mqtts://mqtt.lab:8883", "username": "n1", "password": "p"},
        {"url": "mqtts://10.0.0.2", "cert_file": "/etc/deepedge/client.crt"},
    ],
)
def test_tls_with_a_username_or_a_client_certificate_is_secure(changes: dict[str, str]) -> None:
    assert BrokerConfig(**changes).insecure_reason() is None  # type: ignore[arg-type]


def test_allow_insecure_from_the_environment() -> None:
    env = {"DEEPEDGE_BROKER_URL": "mqtt://10.0.0.2", "DEEPEDGE_BROKER_ALLOW_INSECURE": "true"}
    broker = load_config(environ=env).config.broker
    assert broker.allow_insecure and broker.insecure_reason() is None
    assert not load_config(environ={}).config.broker.allow_insecure  # the default


def test_a_daemon_client_id_is_its_username() -> None:
    with_user = BrokerConfig(url="mqtt://127.0.0.1", username="orin-1", password="p")
    t = MqttTransport(with_user, client_id="deepedge-node-orin-1", identity_client_id=True)
    assert t.client_id == "orin-1"  # what the broker makes it (use_username_as_clientid), and reply topics use
    assert MqttTransport(with_user, client_id="deepedge-node-orin-1").client_id == "deepedge-node-orin-1"
    without = MqttTransport(BrokerConfig(), client_id="deepedge-node-orin-1", identity_client_id=True)
    assert without.client_id == "deepedge-node-orin-1"  # no username: the id given
    assert MqttTransport(BrokerConfig()).client_id.startswith("deepedge-")
