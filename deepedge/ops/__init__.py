"""Operator-side helpers for the CLI: requests to the coordinator and nodes (their presence
checked first), job specs, tables, output outside a terminal, event tailing."""

from deepedge.ops._console import esc, make_console, say, show
from deepedge.ops._job import (
    JOB_ALIASES,
    JOB_FIELDS,
    REQUIRED_JOB_FIELDS,
    builtin_gradient_bytes,
    job_spec,
    parse_duration,
    read_job_file,
)
from deepedge.ops._logs import format_event, tail_events
from deepedge.ops._request import (
    STATUS_WAIT_S,
    CommandError,
    Unavailable,
    coordinator_request,
    coordinator_status,
    node_status,
    profile_node,
    run_profile,
)
from deepedge.ops._tables import status_tables

__all__ = [
    "JOB_ALIASES",
    "JOB_FIELDS",
    "REQUIRED_JOB_FIELDS",
    "STATUS_WAIT_S",
    "CommandError",
    "Unavailable",
    "builtin_gradient_bytes",
    "coordinator_request",
    "coordinator_status",
    "esc",
    "format_event",
    "job_spec",
    "make_console",
    "node_status",
    "parse_duration",
    "profile_node",
    "read_job_file",
    "run_profile",
    "say",
    "show",
    "status_tables",
    "tail_events",
]
