"""Shared fixtures: a real Mosquitto broker on a free port, and a per-test cluster name."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepedge.embedded_broker import MOSQUITTO, MosquittoProcess, free_port

__all__ = ["MOSQUITTO", "MosquittoBroker", "free_port"]

MosquittoBroker = MosquittoProcess  # the name the tests use


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
