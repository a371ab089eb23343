"""Backoff, topic matching and rate-limited drop logging."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from deepedge.backoff import Backoff
from deepedge.broker_schemas import SchemaError, SchemaErrorReason
from deepedge.testing import FakeClock
from deepedge.transport import DropLog, topic_matches, validate_filter


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    b = Backoff(base=0.1, cap=2.0, factor=2.0, floor=0.01, rng=random.Random(1))
    ceilings, delays = [], []
    for _ in range(10):
        ceilings.append(b.ceiling())
        delays.append(b.next_delay())
    assert ceilings[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert ceilings[5:] == [2.0] * 5
    assert all(0.01 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    b.reset()
    assert b.ceiling() == 0.1


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=5, cap=1)


@pytest.mark.parametrize(
    ("flt", "topic", "ok"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("a/+", "a/b/c", False),
        ("a/b", "a/b", True),
        ("+/+", "a/b", True),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(flt: str, topic: str, ok: bool) -> None:
    assert topic_matches(flt, topic) is ok


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "a/+b"])
def test_bad_filters_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_filter(bad)


def test_drops_are_logged_once_per_sender_per_minute() -> None:
    clock = FakeClock()
    drops = DropLog(clock, interval_s=60)
    err = SchemaError(SchemaErrorReason.MALFORMED, "junk")
    with capture_logs() as logs:
        for _ in range(1000):
            drops.drop("node/evil", err, "deepedge/c/node/evil/telemetry")
        drops.drop("node/other", err, "deepedge/c/node/other/telemetry")
        clock.advance(61)
        drops.drop("node/evil", err, "deepedge/c/node/evil/telemetry")
    events = [e for e in logs if e["event"] == "message.dropped"]
    assert [e["sender"] for e in events] == ["node/evil", "node/other", "node/evil"]
    assert events[2]["suppressed_since_last"] == 999
    assert drops.total == 1002


def test_drop_log_memory_is_bounded() -> None:
    drops = DropLog(FakeClock(), max_senders=10)
    for i in range(100):
        drops.drop(f"node/n{i}", "x", "t")
    assert drops.total == 100
    assert drops.senders <= 10


def test_a_flood_from_many_forged_senders_logs_within_the_global_budget() -> None:
    clock = FakeClock()
    drops = DropLog(clock, global_per_s=5.0)
    with capture_logs() as logs:
        for i in range(10_000):
            drops.drop(f"node/forged{i}", "x", "t")
        clock.advance(1.0)
        drops.drop("node/later", "x", "t")
    lines = [e for e in logs if e["event"] == "message.dropped"]
    assert 10 <= len(lines) <= 11 and lines[-1]["sender"] == "node/later"  # the burst, then the budget refills
    assert drops.total == 10_001


def test_rate_limiter_per_key_global_and_bounded() -> None:
    from deepedge.transport._ratelimit import RateLimiter

    lim = RateLimiter(1.0, 2.0, max_keys=3, global_rate=100.0)
    assert [lim.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert lim.take_suppressed("a") == 1 and lim.take_suppressed("a") == 0
    assert lim.allow("a", 1.0)  # refilled one token
    for k in "bcde":
        lim.allow(k, 1.0)
    assert len(lim) == 3  # least recently used forgotten


def test_a_missing_or_bad_tls_file_is_a_config_error_that_names_its_setting(tmp_path: Path) -> None:
    """(a new operator's review, 2026-12-06) The operator config `deploy all` writes, before its
    ca.crt was installed, said only "broker TLS files: [Errno 2] No such file or directory"."""
    from deepedge.config import BrokerConfig, ConfigError
    from deepedge.transport._mqtt import _tls_context

    missing = tmp_path / "ca.crt"
    with pytest.raises(ConfigError, match=f"^broker.ca_file {missing}: does not exist$"):
        _tls_context(BrokerConfig(url="mqtts://broker.lab:8883", ca_file=str(missing)))
    with pytest.raises(ConfigError, match=f"^broker.cert_file {tmp_path}: not a file$"):
        _tls_context(BrokerConfig(url="mqtts://broker.lab:8883", cert_file=str(tmp_path)))
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"^broker TLS files \\(broker.ca_file {junk}\\): "):
        _tls_context(BrokerConfig(url="mqtts://broker.lab:8883", ca_file=str(junk)))
