"""The training worker: heterogeneous-share all-reduce training with in-place elastic recovery.
Knows nothing about MQTT; imports torch (only the worker process does)."""

import os as _os

# Before torch loads its OpenMP runtime: its idle threads must sleep, not spin. Spinning, they
# kept ~70 % of the CPU busy while the intensity throttle "slept" at cap 0.5, so the LC apps did
# not get their share back (tests/test_training.py::test_intensity_cap_holds_within_10_percent).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from deepedge.training._accounting import AccountingLog, read_records, verify_accounting
from deepedge.training._data import TensorDataset, load_dataset
from deepedge.training._errors import TrainingError
from deepedge.training._models import SmallCNN, build_model, load_checkpoint
from deepedge.training._timing import StepTiming, step_timing
from deepedge.training._trainer import slice_of

__all__ = [
    "AccountingLog",
    "SmallCNN",
    "StepTiming",
    "TensorDataset",
    "TrainingError",
    "build_model",
    "load_checkpoint",
    "load_dataset",
    "read_records",
    "slice_of",
    "step_timing",
    "verify_accounting",
]
