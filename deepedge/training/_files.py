"""The worker's files, opened so that nothing planted in its folders can redirect them: no
symlink is followed when a file is opened, created or replaced; temporary files are created
exclusively; checkpoints are fsynced (file and folder) before they replace the old one; a full
disk is a TrainingError naming the node and the path (the job fails with it, it is not mistaken
for a lost peer). ``torch.load`` only with ``weights_only=True`` and only on torch >= 2.6, where
that loader is safe (CVE-2025-32434); torch is imported only for that."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from deepedge.training._errors import TrainingError

__all__ = ["append_text", "ensure_dir", "load_weights", "os_error", "safe_torch", "write_atomic"]

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _version(text: str) -> tuple[int, int]:
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def safe_torch(version: str) -> bool:
    """Is ``torch.load(weights_only=True)`` a safe loader in this torch version (>= 2.6)?"""
    return _version(version) >= (2, 6)


def os_error(what: str, path: Path, exc: OSError) -> TrainingError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TrainingError(f"disk full on {os.uname().nodename}: {path}")
    if exc.errno == errno.ELOOP:
        return TrainingError(f"{what} {path} is a symlink: refused")
    return TrainingError(f"{what} {path}: {exc.strerror or exc}")


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents); refuse if it, or what was created, is a symlink."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or not path.is_dir():
            raise TrainingError(f"output folder {path} is a symlink or not a folder: refused")
    except OSError as exc:
        raise os_error("output folder", path, exc) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def write_atomic(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a fresh temporary file (created with O_EXCL, never through a
    symlink), fsync it, rename it over ``path`` and fsync the folder: a reader sees the old
    file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()  # a leftover of a killed run (unlinking a symlink removes only the link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o640)
    except OSError as exc:
        raise os_error("temporary file", tmp, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if path.is_symlink():
            raise TrainingError(f"{path} is a symlink: refused")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise os_error("writing", path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def append_text(path: Path) -> IO[str]:
    """``path`` opened for appending text, created if missing, never through a symlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o640)
    except OSError as exc:
        raise os_error("file", path, exc) from None
    return os.fdopen(fd, "a")


def load_weights(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a regular file opened without following symlinks."""
    import torch  # (this module is also used where torch is not loaded)

    if not safe_torch(torch.__version__):
        raise TrainingError(
            f"{what} {path}: torch {torch.__version__} is older than 2.6, whose weights_only loader is not "
            "safe (CVE-2025-32434); install torch >= 2.6 (docs/install.md)"
        )
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        raise TrainingError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise os_error(what, path, exc) from None
    with os.fdopen(fd, "rb") as fh:
        try:
            return torch.load(fh, weights_only=True, map_location="cpu")
        except Exception as exc:
            raise TrainingError(f"{what} {path}: corrupt or not a weights file: {str(exc)[:300]}") from None
