"""An image folder on disk (``<root>/<class>/<image>``), listed and opened without torch, for the
worker (``_data``) and the node's pre-flight check (``preflight``) alike.

Nothing in it follows a symbolic link: a class folder or an image that is a link is refused, so a
dataset under an allowed data root (``[training] data_roots``) cannot reach files outside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["IMAGE_SUFFIXES", "FolderError", "list_classes", "open_image"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm"})


LINKED = "is a symbolic link (refused: data is read only from under its root)"


class FolderError(Exception):
    """The folder cannot be used as a dataset; the message says why."""


def _entries(folder: Path, what: str) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise FolderError(f"{what}: {exc.strerror or exc}") from None


def list_classes(root: Path) -> list[tuple[str, list[Path]]]:
    """Each class folder (sorted by name, hidden ones left out) with its image files (sorted).

    Raises FolderError for a class folder or image that is a symbolic link, an unreadable folder,
    or a root without class folders."""
    classes: list[tuple[str, list[Path]]] = []
    for entry in _entries(root, f"dataset {root}"):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            raise FolderError(
                f"dataset {root}: {entry.name} is a symbolic link (refused: data is read only from under its root)"
            )
        if not entry.is_dir(follow_symlinks=False):
            continue
        images: list[Path] = []
        for image in _entries(Path(entry.path), f"dataset {root}: class folder {entry.name}"):
            if Path(image.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if image.is_symlink():
                raise FolderError(f"dataset {root}: {entry.name}/{image.name} {LINKED}")
            images.append(Path(image.path))
        classes.append((entry.name, images))
    if not classes:
        raise FolderError(f"dataset {root}: no class folders (expected <root>/<class>/<image>)")
    return classes


def open_image(path: Path) -> BinaryIO:
    """The file for reading, refused (ELOOP) if it became a symbolic link since it was listed."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
