from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepedge.broker_schemas import (
    ID_PATTERN,
    ParsedTopic,
    SchemaError,
    SchemaErrorReason,
    TopicKind,
    Topics,
    parse_topic,
)
from tests.strategies import ids

T = Topics("lab")


@given(node=ids, job=ids, client=ids, rid=ids)
def test_every_built_topic_parses_back(node: str, job: str, client: str, rid: str) -> None:
    cases = {
        T.node_status(node): ParsedTopic("lab", TopicKind.NODE_STATUS, node=node),
        T.node_telemetry(node): ParsedTopic("lab", TopicKind.NODE_TELEMETRY, node=node),
        T.node_latency(node): ParsedTopic("lab", TopicKind.NODE_LATENCY, node=node),
        T.node_heartbeat(node): ParsedTopic("lab", TopicKind.NODE_HEARTBEAT, node=node),
        T.coordinator_status(): ParsedTopic("lab", TopicKind.COORDINATOR_STATUS),
        T.job_plan(job): ParsedTopic("lab", TopicKind.JOB_PLAN, job=job),
        T.job_progress(job): ParsedTopic("lab", TopicKind.JOB_PROGRESS, job=job),
        T.node_command(node, "set-deadline"): ParsedTopic(
            "lab", TopicKind.NODE_COMMAND, node=node, verb="set-deadline"
        ),
        T.coordinator_command("submit"): ParsedTopic("lab", TopicKind.COORDINATOR_COMMAND, verb="submit"),
        T.reply(client, rid): ParsedTopic("lab", TopicKind.REPLY, client=client, request_id=rid, from_coordinator=True),
        T.reply(client, rid, node): ParsedTopic("lab", TopicKind.REPLY, node=node),  # one topic per node
        T.events(): ParsedTopic("lab", TopicKind.EVENTS, from_coordinator=True),
        T.events(node): ParsedTopic("lab", TopicKind.EVENTS, node=node),
    }
    for topic, parsed in cases.items():
        assert parse_topic(topic) == parsed


def test_topic_layout_matches_the_design() -> None:
    assert T.node_status("jetson-01") == "deepedge/lab/node/jetson-01/status"
    assert T.job_plan("j1") == "deepedge/lab/job/j1/plan"
    assert T.node_command("n1", "drain") == "deepedge/lab/cmd/node/n1/drain"
    assert T.coordinator_command("submit") == "deepedge/lab/cmd/coordinator/submit"
    assert T.reply("cli-7", "r1") == "deepedge/lab/reply/cli-7/coordinator/r1"
    assert T.reply("cli-7", "r1", "n1") == "deepedge/lab/reply/node/n1"
    assert T.replies("cli-7") == "deepedge/lab/reply/cli-7/#"
    assert T.node_replies() == "deepedge/lab/reply/node/+"
    assert T.events() == "deepedge/lab/events/coordinator"
    assert T.events("n1") == "deepedge/lab/events/node/n1"
    assert T.all_events() == "deepedge/lab/events/#"
    assert T.all_nodes("telemetry") == "deepedge/lab/node/+/telemetry"
    assert T.node_commands("n1") == "deepedge/lab/cmd/node/n1/+"


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 65, "sp ace", "ümlaut", "a\x00"])
def test_builder_refuses_bad_ids(bad: str) -> None:
    with pytest.raises(SchemaError) as err:
        T.node_status(bad)
    assert err.value.reason is SchemaErrorReason.BAD_TOPIC
    with pytest.raises(SchemaError):
        Topics(bad)


@pytest.mark.parametrize(
    "topic",
    [
        "deepedge/lab/node/n1/statusx",
        "deepedge/lab/node/n1",
        "deepedge/lab/node/n1/status/extra",
        "deepedge/lab/node/+/status",
        "deepedge/lab/node/#",
        "other/lab/node/n1/status",
        "deepedge//node/n1/status",
        "deepedge/lab/cmd/node/n1/DRAIN",
        "deepedge/lab/cmd/coordinator",
        "deepedge/lab/job/j1/plan/x",
        "deepedge/lab/reply/c1",
        "deepedge/lab/reply/c1/r1",
        "deepedge/lab/reply/c1/node/r1",
        "deepedge/lab/reply/c1/node/n1/r1",  # the layout before 2026-12-06: refused now
        "deepedge/lab/reply/node/n1/r1",
        "deepedge/lab/reply/node",
        "deepedge/lab/events",
        "deepedge/lab/events/x",
        "deepedge/lab/events/node",
        "deepedge/lab/events/node/a/b",
        "deepedge",
        "",
    ],
)
def test_parser_refuses_everything_else(topic: str) -> None:
    with pytest.raises(SchemaError) as err:
        parse_topic(topic)
    assert err.value.reason is SchemaErrorReason.BAD_TOPIC
    assert err.value.topic == topic


@given(st.text(max_size=120))
def test_parser_never_raises_anything_but_schema_error(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except SchemaError:
        return
    for value in (parsed.cluster, parsed.node, parsed.job, parsed.client, parsed.request_id):
        assert value is None or ID_PATTERN.fullmatch(value)
