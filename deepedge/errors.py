"""The one exception base of deepedge and the process exit codes of its entry points.

Exit codes follow sysexits(3) so systemd units can tell a configuration error (do not restart:
``RestartPreventExitStatus=78``) from a transient failure (restart with backoff).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["DeepEdgeError", "ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # an unexpected error; a bug report is welcome
    USAGE = 2  # bad command-line usage (typer/click's own code)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: the coordinator or node refused the request (a typed error reply)
    TEMPFAIL = 75  # EX_TEMPFAIL: transient (broker unreachable, ...): systemd may restart
    CONFIG = 78  # EX_CONFIG: the configuration is wrong; restarting will not help


class DeepEdgeError(Exception):
    """Base of every error deepedge raises on purpose. ``exit_code`` tells an entry point how
    to exit when the error reaches it."""

    exit_code: ExitCode = ExitCode.FAILURE
