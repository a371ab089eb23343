"""Operator-side helpers for the CLI: requests to the coordinator, tables, event tailing."""

from deepedge.ops._logs import format_event, tail_events
from deepedge.ops._request import CommandError, coordinator_request, profile_node, run_profile
from deepedge.ops._tables import status_tables

__all__ = [
    "CommandError",
    "coordinator_request",
    "format_event",
    "profile_node",
    "run_profile",
    "status_tables",
    "tail_events",
]
