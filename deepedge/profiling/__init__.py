"""Interference profiling (FECBench-style): controlled stressors, designed experiments,
surrogate models with uncertainty, the knowledge base, and the LC request-rate forecast
(Barista-style). See docs/planner.md.

Importing this package imports nothing heavy: numpy, scipy, scikit-learn and statsmodels load
only with the modules that need them (PEP 562), so the node daemon can run stressors and
measurements (``_stressors``, ``_runner``) without them."""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from deepedge._lazy import lazy_attributes as _lazy_attributes
from deepedge.profiling._kb import (
    EXPORT_FORMAT,
    KnowledgeBase,
    KnowledgeBaseError,
    ProfileKey,
    ProfileSummary,
    TableCache,
    knowledge_base_path,
    versions_key,
)
from deepedge.profiling._space import FEATURES, STRESSORS, Point, Run
from deepedge.profiling._table import CapTable

if _TYPE_CHECKING:
    from deepedge.profiling._design import Space, adaptive_points, latin_hypercube
    from deepedge.profiling._forecast import RateForecast, forecast_upper
    from deepedge.profiling._runner import LatencySink, PointRunner, RunnerConfig, rate_file_for
    from deepedge.profiling._session import ProfileSession, SessionResult
    from deepedge.profiling._stressors import StressorError, Stressors
    from deepedge.profiling._surrogate import KINDS, Surrogate, cross_validate, fit, select

_LAZY = {
    "Space": "deepedge.profiling._design",
    "adaptive_points": "deepedge.profiling._design",
    "latin_hypercube": "deepedge.profiling._design",
    "RateForecast": "deepedge.profiling._forecast",
    "forecast_upper": "deepedge.profiling._forecast",
    "LatencySink": "deepedge.profiling._runner",
    "PointRunner": "deepedge.profiling._runner",
    "RunnerConfig": "deepedge.profiling._runner",
    "rate_file_for": "deepedge.profiling._runner",
    "ProfileSession": "deepedge.profiling._session",
    "SessionResult": "deepedge.profiling._session",
    "Stressors": "deepedge.profiling._stressors",
    "StressorError": "deepedge.profiling._stressors",
    "KINDS": "deepedge.profiling._surrogate",
    "Surrogate": "deepedge.profiling._surrogate",
    "cross_validate": "deepedge.profiling._surrogate",
    "fit": "deepedge.profiling._surrogate",
    "select": "deepedge.profiling._surrogate",
}


__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "EXPORT_FORMAT",
    "FEATURES",
    "KINDS",
    "STRESSORS",
    "CapTable",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "LatencySink",
    "Point",
    "PointRunner",
    "ProfileKey",
    "ProfileSession",
    "ProfileSummary",
    "RateForecast",
    "Run",
    "RunnerConfig",
    "SessionResult",
    "Space",
    "StressorError",
    "Stressors",
    "Surrogate",
    "TableCache",
    "adaptive_points",
    "cross_validate",
    "fit",
    "forecast_upper",
    "knowledge_base_path",
    "latin_hypercube",
    "rate_file_for",
    "select",
    "versions_key",
]
