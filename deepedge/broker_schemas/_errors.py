"""The codec's one typed error."""

from __future__ import annotations

from deepedge.compat import StrEnum
from deepedge.errors import DeepEdgeError

__all__ = ["SchemaError", "SchemaErrorReason"]


class SchemaErrorReason(StrEnum):
    BAD_TOPIC = "bad_topic"  # not a topic of the design, or an id outside [A-Za-z0-9_.-]{1,64}
    TOO_LARGE = "too_large"  # payload over MAX_PAYLOAD_BYTES
    MALFORMED = "malformed"  # not MessagePack (or JSON for commands) at all
    UNKNOWN_VERSION = "unknown_version"  # a schema version this build does not speak
    WRONG_TYPE = "wrong_type"  # decodes, but not to the message type the topic carries
    ID_MISMATCH = "id_mismatch"  # payload claims another node/job than its topic


class SchemaError(DeepEdgeError):
    """Raised for every payload or topic the codec refuses. Carries the reason as data so a
    daemon can log it (rate-limited) and drop the message."""

    def __init__(self, reason: SchemaErrorReason, detail: str, topic: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.topic = topic
        where = f" on {topic!r}" if topic is not None else ""
        super().__init__(f"{reason.value}{where}: {detail}")
