"""Datasets, read without torchvision: an image folder (one sub-folder per class, like
Caltech-256) or tensors in a file (``torch.save({"x": ..., "y": ...})``, loaded with
``weights_only=True``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from deepedge.training._data_cache import (
    RACY_S,
    DataCache,
    folder_identities,
    folder_key,
    opened_as_listed,
    racy,
)
from deepedge.training._errors import TrainingError
from deepedge.training._files import load_weights
from deepedge.training._folder import IMAGE_SUFFIXES, FolderError, list_classes, open_image

__all__ = ["IMAGE_SUFFIXES", "TensorDataset", "load_dataset"]


class TensorDataset:
    """All samples in memory: ``x`` (N, C, H, W) uint8 or float, ``y`` (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> None:
        if len(x) != len(y):
            raise TrainingError(f"dataset: {len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.classes = x, y.long(), classes
        self.origin = ""  # how it was loaded, for the worker's log

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0).sub_(0.5).div_(0.25)
        return x, self.y[index]


def _image_folder(
    root: Path, size: int, pace: Callable[[], None] | None = None, cache: DataCache | None = None
) -> TensorDataset:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise TrainingError("reading an image folder needs pillow (pip install pillow)") from None
    started = time.monotonic()  # listing and the cache's key included
    try:
        listed = list_classes(root)
    except FolderError as exc:
        raise TrainingError(str(exc)) from None
    classes = [name for name, _ in listed]
    count = sum(len(paths) for _, paths in listed)
    identities = folder_identities(listed) if cache is not None else None
    listed_ns = time.time_ns()
    key = folder_key(listed, size, identities) if identities is not None else None
    if cache is not None and key is not None and (hit := cache.load(key, classes, count, size)) is not None:
        ds = TensorDataset(*hit, classes)
        ds.origin = f"{count} images from the decoded cache in {time.monotonic() - started:.2f} s"
        return ds
    xs: list[torch.Tensor] = []
    ys: list[int] = []
    changed = False  # an image opened is not the one listed (replaced since): not cached
    for label, (_, paths) in enumerate(listed):
        for path in paths:
            try:
                with open_image(path) as fh, Image.open(fh) as img:
                    if identities is not None and not opened_as_listed(fh.fileno(), identities[len(xs)]):
                        changed = True
                    rgb = img.convert("RGB").resize((size, size))
                    xs.append(torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise TrainingError(f"dataset {root}: unreadable image {path}: {exc}") from None
            ys.append(label)
            if pace is not None:
                pace()
    if not xs:
        raise TrainingError(f"dataset {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    ds = TensorDataset(torch.stack(xs).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys), classes)
    ds.origin = f"{count} images decoded in {time.monotonic() - started:.2f} s"
    if cache is None:
        return ds
    if identities is None or key is None:
        ds.origin += "; not cached (an image could not be stat'ed)"
    elif changed:
        ds.origin += "; not cached (an image was replaced while the folder was decoded)"
    elif racy(identities, listed_ns):
        ds.origin += f"; not cached (an image changed less than {RACY_S:.0f} s before it was listed)"
    else:
        kept = cache.store(key, ds.x, ds.y, classes)
        ds.origin += "; kept in the decoded cache" if kept else f"; not cached ({cache.note})"
    return ds


def _tensor_file(path: Path) -> TensorDataset:
    data = load_weights(path, "dataset")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("x"), torch.Tensor)
        or not isinstance(data.get("y"), torch.Tensor)
    ):
        raise TrainingError(f"dataset {path}: expected a dict with tensors 'x' and 'y'")
    classes = [str(c) for c in data.get("classes", [])] or [str(i) for i in range(int(data["y"].max()) + 1)]
    return TensorDataset(data["x"], data["y"], classes)


def load_dataset(
    location: str, image_size: int = 32, pace: Callable[[], None] | None = None, cache: DataCache | None = None
) -> TensorDataset:
    """``pace``: called after each image decoded (the worker's slow start paces its loading).
    ``cache``: the board's decoded-dataset cache, for an image folder (``_data_cache``)."""
    path = Path(location)
    if path.is_dir():
        return _image_folder(path, image_size, pace, cache)
    if path.is_file():
        return _tensor_file(path)
    raise TrainingError(f"dataset {location}: no such file or folder")
