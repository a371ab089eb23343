"""The training worker: heterogeneous-share all-reduce training with in-place elastic recovery.
Knows nothing about MQTT; imports torch (only the worker process does)."""

from deepedge.training._accounting import AccountingLog, verify_accounting
from deepedge.training._data import TensorDataset, load_dataset
from deepedge.training._errors import TrainingError
from deepedge.training._models import SmallCNN, build_model, load_checkpoint

__all__ = [
    "AccountingLog",
    "SmallCNN",
    "TensorDataset",
    "TrainingError",
    "build_model",
    "load_checkpoint",
    "load_dataset",
    "verify_accounting",
]
