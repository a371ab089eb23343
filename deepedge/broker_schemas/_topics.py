"""Topic names of the design: one builder, one parser that refuses anything else.

Every topic lives under ``deepedge/<cluster>/``::

    node/<node>/status|telemetry|latency|heartbeat
    coordinator/status
    job/<job>/plan|progress
    cmd/node/<node>/<verb>     cmd/coordinator/<verb>
    reply/node/<node>          reply/<client>/coordinator/<request_id>
    events/node/<node>         events/coordinator

A reply and an event name who sent it in the topic, so the broker's ACL can let each party
write only as itself (a node only ``reply/node/<itself>`` and ``events/node/<itself>``), and
the codec checks that the payload says the same. A node's replies all go to one exact topic
(the request id is in the payload; each requester reads the topics of the nodes it asked), so
that the topics a node may write, and retain on, are a fixed handful: with the requester and
the request id in the topic, a node could retain on as many topics as it liked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepedge.broker_schemas._errors import SchemaError, SchemaErrorReason
from deepedge.compat import StrEnum

__all__ = [
    "ID_PATTERN",
    "ROOT",
    "VERB_PATTERN",
    "ParsedTopic",
    "TopicKind",
    "Topics",
    "parse_topic",
    "validate_id",
]

ROOT = "deepedge"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VERB_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")


class TopicKind(StrEnum):
    NODE_STATUS = "node_status"
    NODE_TELEMETRY = "node_telemetry"
    NODE_LATENCY = "node_latency"
    NODE_HEARTBEAT = "node_heartbeat"
    COORDINATOR_STATUS = "coordinator_status"
    JOB_PLAN = "job_plan"
    JOB_PROGRESS = "job_progress"
    NODE_COMMAND = "node_command"
    COORDINATOR_COMMAND = "coordinator_command"
    REPLY = "reply"
    EVENTS = "events"


_NODE_LEAVES = {
    "status": TopicKind.NODE_STATUS,
    "telemetry": TopicKind.NODE_TELEMETRY,
    "latency": TopicKind.NODE_LATENCY,
    "heartbeat": TopicKind.NODE_HEARTBEAT,
}
_JOB_LEAVES = {"plan": TopicKind.JOB_PLAN, "progress": TopicKind.JOB_PROGRESS}


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid node/job/client/request id, else raise SchemaError."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise SchemaError(SchemaErrorReason.BAD_TOPIC, f"{what} {value!r} does not match [A-Za-z0-9_.-]{{1,64}}")
    return value


def _validate_verb(verb: str) -> str:
    if VERB_PATTERN.fullmatch(verb) is None:
        raise SchemaError(SchemaErrorReason.BAD_TOPIC, f"verb {verb!r} does not match [a-z][a-z0-9-]{{0,31}}")
    return verb


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """What a topic says: its cluster, kind and the ids in it (``None`` where the kind has none)."""

    cluster: str
    kind: TopicKind
    node: str | None = None
    job: str | None = None
    verb: str | None = None
    client: str | None = None
    request_id: str | None = None
    # replies and events: who sent it ("coordinator", or the node in ``node``)
    from_coordinator: bool = False


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds every topic of one cluster. Ids are validated; a bad one raises SchemaError."""

    cluster: str

    def __post_init__(self) -> None:
        validate_id(self.cluster, "cluster")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.cluster}"

    def node_status(self, node: str) -> str:
        return f"{self.prefix}/node/{validate_id(node, 'node')}/status"

    def node_telemetry(self, node: str) -> str:
        return f"{self.prefix}/node/{validate_id(node, 'node')}/telemetry"

    def node_latency(self, node: str) -> str:
        return f"{self.prefix}/node/{validate_id(node, 'node')}/latency"

    def node_heartbeat(self, node: str) -> str:
        return f"{self.prefix}/node/{validate_id(node, 'node')}/heartbeat"

    def coordinator_status(self) -> str:
        return f"{self.prefix}/coordinator/status"

    def job_plan(self, job: str) -> str:
        return f"{self.prefix}/job/{validate_id(job, 'job')}/plan"

    def job_progress(self, job: str) -> str:
        return f"{self.prefix}/job/{validate_id(job, 'job')}/progress"

    def node_command(self, node: str, verb: str) -> str:
        return f"{self.prefix}/cmd/node/{validate_id(node, 'node')}/{_validate_verb(verb)}"

    def coordinator_command(self, verb: str) -> str:
        return f"{self.prefix}/cmd/coordinator/{_validate_verb(verb)}"

    def reply(self, client: str, request_id: str, responder: str | None = None) -> str:
        """The reply to ``client``'s request, from node ``responder`` (``reply/node/<responder>``,
        whoever asked) or from the coordinator (None: ``reply/<client>/coordinator/<request_id>``)."""
        if responder is not None:
            validate_id(client, "client")  # in the payload: refused as they would be in a topic
            validate_id(request_id, "request id")
            return self.node_reply(responder)
        rid = validate_id(request_id, "request id")
        return f"{self.prefix}/reply/{validate_id(client, 'client')}/coordinator/{rid}"

    def node_reply(self, node: str) -> str:
        """Node ``node``'s one reply topic, whoever asked."""
        return f"{self.prefix}/reply/node/{validate_id(node, 'node')}"

    def events(self, node: str | None = None) -> str:
        """Where ``node`` (None: the coordinator) publishes its events."""
        return f"{self.prefix}/events/" + ("coordinator" if node is None else f"node/{validate_id(node, 'node')}")

    def all_events(self) -> str:
        return f"{self.prefix}/events/#"

    # Subscription filters (MQTT wildcards), for the subscribers of the design.
    def all_nodes(self, leaf: str = "+") -> str:
        """``node/+/<leaf>``; ``leaf='+'`` for every node topic."""
        if leaf != "+" and leaf not in _NODE_LEAVES:
            raise ValueError(f"unknown node topic {leaf!r}")
        return f"{self.prefix}/node/+/{leaf}"

    def all_jobs(self, leaf: str = "+") -> str:
        if leaf != "+" and leaf not in _JOB_LEAVES:
            raise ValueError(f"unknown job topic {leaf!r}")
        return f"{self.prefix}/job/+/{leaf}"

    def node_commands(self, node: str) -> str:
        return f"{self.prefix}/cmd/node/{validate_id(node, 'node')}/+"

    def coordinator_commands(self) -> str:
        return f"{self.prefix}/cmd/coordinator/+"

    def replies(self, client: str) -> str:
        """The coordinator's replies to ``client`` (the nodes' replies: :meth:`node_replies`)."""
        return f"{self.prefix}/reply/{validate_id(client, 'client')}/#"

    def node_replies(self) -> str:
        """Every node's replies, to whoever asked (a requester keeps those of its own requests)."""
        return f"{self.prefix}/reply/node/+"


def _bad(topic: str, why: str) -> SchemaError:
    return SchemaError(SchemaErrorReason.BAD_TOPIC, why, topic)


def parse_topic(topic: str) -> ParsedTopic:
    """Parse a concrete topic of the design (no wildcards); raise SchemaError for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise _bad(topic, f"not under {ROOT}/<cluster>/")
    try:
        cluster = validate_id(parts[1], "cluster")
        rest = parts[2:]
        match rest:
            case ["node", node, leaf] if leaf in _NODE_LEAVES:
                return ParsedTopic(cluster, _NODE_LEAVES[leaf], node=validate_id(node, "node"))
            case ["coordinator", "status"]:
                return ParsedTopic(cluster, TopicKind.COORDINATOR_STATUS)
            case ["job", job, leaf] if leaf in _JOB_LEAVES:
                return ParsedTopic(cluster, _JOB_LEAVES[leaf], job=validate_id(job, "job"))
            case ["cmd", "node", node, verb]:
                return ParsedTopic(
                    cluster, TopicKind.NODE_COMMAND, node=validate_id(node, "node"), verb=_validate_verb(verb)
                )
            case ["cmd", "coordinator", verb]:
                return ParsedTopic(cluster, TopicKind.COORDINATOR_COMMAND, verb=_validate_verb(verb))
            case ["reply", client, "coordinator", request_id]:
                return ParsedTopic(
                    cluster,
                    TopicKind.REPLY,
                    client=validate_id(client, "client"),
                    request_id=validate_id(request_id, "request id"),
                    from_coordinator=True,
                )
            case ["reply", "node", node]:
                return ParsedTopic(cluster, TopicKind.REPLY, node=validate_id(node, "node"))
            case ["events", "coordinator"]:
                return ParsedTopic(cluster, TopicKind.EVENTS, from_coordinator=True)
            case ["events", "node", node]:
                return ParsedTopic(cluster, TopicKind.EVENTS, node=validate_id(node, "node"))
            case _:
                raise _bad(topic, "not a topic of the design")
    except SchemaError as exc:
        if exc.topic is None:
            raise _bad(topic, exc.detail) from None
        raise
