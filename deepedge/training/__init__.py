"""The training worker: heterogeneous-share all-reduce training with in-place elastic recovery.
Knows nothing about MQTT. Importing this package does not import torch: the names that need it
(models, datasets, the trainer's ``slice_of``) load on first use (PEP 562), so the worker reads
its plan before torch loads, and the coordinator's and CLI's users of ``verify_accounting`` and
``step_timing`` never load it."""

import os as _os
from typing import TYPE_CHECKING as _TYPE_CHECKING

from deepedge._lazy import lazy_attributes as _lazy_attributes

# Before torch loads its OpenMP runtime: its idle threads must sleep, not spin. Spinning, they
# kept ~70 % of the CPU busy while the intensity throttle "slept" at cap 0.5, so the LC apps did
# not get their share back (tests/test_training.py::test_intensity_cap_holds_within_10_percent).
# Set here, in the package, because every module that imports torch is inside it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from deepedge.training._accounting import AccountingLog, read_records, verify_accounting
from deepedge.training._errors import TrainingError
from deepedge.training._timing import StepTiming, step_timing

if _TYPE_CHECKING:
    from deepedge.training._data import TensorDataset, load_dataset
    from deepedge.training._models import SmallCNN, build_model, load_checkpoint
    from deepedge.training._trainer import slice_of

# name -> the module that defines it; those modules import torch
_LAZY = {
    "SmallCNN": "deepedge.training._models",
    "build_model": "deepedge.training._models",
    "load_checkpoint": "deepedge.training._models",
    "TensorDataset": "deepedge.training._data",
    "load_dataset": "deepedge.training._data",
    "slice_of": "deepedge.training._trainer",
}


__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())


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
