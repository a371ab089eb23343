"""Shared fixtures: a real Mosquitto broker on a free port, a client watching it, the daemons a
test starts (stopped at its end), and a per-test cluster name."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from deepedge.embedded_broker import MOSQUITTO, MosquittoProcess, free_port
from deepedge.transport import MqttTransport
from tests.helpers.node_proc import NodeProc

__all__ = ["MOSQUITTO", "MosquittoBroker", "free_port"]

MosquittoBroker = MosquittoProcess  # the name the tests use


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that runs a CLI command in-process (CliRunner, ``main([...])``) configures logging
    onto the stream it was given, which is closed after it: every later log line in the session
    would raise "I/O operation on closed file". Logging is put back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if MOSQUITTO is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; CI must install it (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def cluster() -> str:
    """A cluster name of its own for each test, so topics never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def watcher(mosquitto: MosquittoBroker) -> AsyncIterator[MqttTransport]:
    """A plain client of the test's broker, to publish and subscribe as the test likes."""
    async with MqttTransport(mosquitto.config()) as t:
        yield t


@pytest.fixture
def procs() -> Iterator[list[NodeProc]]:
    """Daemons (and coordinators) the test starts: killed at its end."""
    started: list[NodeProc] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def nodes(procs: list[NodeProc]) -> list[NodeProc]:
    """The same list as ``procs``, by the name the node tests use."""
    return procs
