"""The docs name every message type and topic kind that exists."""

from __future__ import annotations

from pathlib import Path

from deepedge.broker_schemas import MESSAGE_TYPES, SchemaErrorReason

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_protocol_doc_covers_every_message_and_error_reason() -> None:
    text = (DOCS / "protocol.md").read_text()
    for cls in MESSAGE_TYPES:
        assert f"`{cls.__name__}`" in text, cls.__name__
    for reason in SchemaErrorReason:
        assert f"`{reason.value}`" in text, reason
