"""deepedge: retrain deep-learning models on clusters of edge boards without hurting their
latency-critical applications."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepedge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
