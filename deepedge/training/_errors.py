"""Errors of the training worker that no restart will fix (bad checkpoint, data, model)."""

from __future__ import annotations

from deepedge.errors import DeepEdgeError, ExitCode

__all__ = ["TrainingError"]


class TrainingError(DeepEdgeError):
    exit_code = ExitCode.CONFIG
