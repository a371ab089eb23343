"""The decoded-dataset cache (``training.data_cache_dir``, ``training.data_cache_mb``): an image
folder a worker decoded once on this board is kept as one tensor file, so that the next worker
of the same data (a board put back into a job's plan, a restart after a crash, the next job on
the same images) loads it in milliseconds instead of decoding every image again.

Why: decoding is paced at a fraction of the board's cap so that it does not hit the LC apps
(``_compute.RAMP_FLOOR``); at a low cap 3,000 images took ~16 s, and the job's other boards waited
for it at the rendezvous (docs/benchmarks/lc-scenarios.md). A board re-added after an LC hold
paid that every time.

The key is a hash of every listed image's own identity (name, device, inode, mode, size, mtime,
ctime: an image added, removed, replaced or touched changes it), the class names, the image size,
Pillow's and deepedge's versions and the decoding code's identity. Nothing is decoded to compute
it. An entry is ``ds-<key>.pt`` holding ``{"x": uint8 (N, 3, S, S), "y": int64 (N,), "classes":
[...]}``, written by this board's worker (mode 0600, to a temporary file created with O_EXCL, then renamed) and read
with ``torch.load(weights_only=True)`` (no code runs) only when it is this user's own regular file
writable by no one else, in a folder likewise; an entry whose shapes, labels or classes do not
match the listing is ignored and written anew. The oldest entries (by last use) are removed to
keep the folder within ``data_cache_mb``; a dataset larger than that is not cached."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import torch

from deepedge.training._files import safe_torch
from deepedge.training._preflight_cache import identity, only_mine, package_version, stat_identity

__all__ = ["RACY_S", "DataCache", "folder_identities", "folder_key", "opened_as_listed", "racy"]

VERSION = 1
PREFIX, SUFFIX = "ds-", ".pt"
RACY_S = 3.0  # an image changed this recently: not cached (racy)
STALE_TMP_S = 600.0  # a temporary file this old was left by a worker killed while writing
OVERHEAD = 16 << 10  # bytes of a tensor file beyond its tensors' (its zip records), for the budget
DECODING_SOURCES = tuple(Path(__file__).with_name(name) for name in ("_data.py", "_folder.py"))


def folder_identities(listed: list[tuple[str, list[Path]]]) -> list[list[int]] | None:
    """Each listed image's own identity (``identity``), in listing order (None: one could not be
    stat'ed). The decoder checks every image it opens against these."""
    try:
        return [identity(path) for _, paths in listed for path in paths]
    except OSError:
        return None


def folder_key(listed: list[tuple[str, list[Path]]], image_size: int, identities: list[list[int]]) -> str | None:
    """The key of an image folder's decoding, from its listing and ``folder_identities``."""
    import deepedge

    h = hashlib.sha256()
    try:
        head = {
            "version": VERSION,
            "image_size": image_size,
            "pillow": package_version("pillow"),
            "deepedge": deepedge.__version__,
            "source": [identity(p) for p in DECODING_SOURCES],
            "classes": [name for name, _ in listed],
        }
    except OSError:
        return None
    h.update(json.dumps(head, sort_keys=True).encode())
    paths = (f"{name}/{path.name}" for name, group in listed for path in group)
    for name, ident in zip(paths, identities, strict=True):
        h.update(json.dumps([name, ident]).encode())
    return h.hexdigest()


def opened_as_listed(fd: int, listed: list[int]) -> bool:
    """Is the file open on ``fd`` the one whose identity was listed (not replaced since)?"""
    return stat_identity(os.fstat(fd)) == listed


def racy(identities: list[list[int]], listed_ns: int) -> bool:
    """Was an image changed within ``RACY_S`` before it was listed (``listed_ns``, as
    ``time.time_ns()``)? On a file system whose timestamps are coarse (FAT: 2 s) a rewrite of the
    same size in the same tick keeps its identity, so such a folder is decoded but not cached
    (git's "racily clean" files)."""
    return any(listed_ns - max(ident[4], ident[5]) < RACY_S * 1e9 for ident in identities)


class DataCache:
    """One board's cache folder, created (mode 0700, its parent must exist) on first use."""

    def __init__(self, folder: str, max_mb: int) -> None:
        self.folder = Path(folder) if folder else None
        self.max_bytes = max(0, max_mb) << 20
        self.note = ""  # why the last lookup or store did not use the cache, for the worker's log

    def _usable(self) -> Path | None:
        if self.folder is None or self.max_bytes == 0:
            self.note = "off"
            return None
        if not safe_torch(torch.__version__):  # weights_only is not a safe loader before 2.6
            self.note = f"off: torch {torch.__version__} is older than 2.6"
            return None
        with contextlib.suppress(FileExistsError, OSError):
            os.mkdir(self.folder, 0o700)
        try:
            st = os.lstat(self.folder)
        except OSError as exc:
            self.note = f"{self.folder}: {exc.strerror or exc}"
            return None
        if not stat.S_ISDIR(st.st_mode) or not only_mine(st):
            self.note = f"{self.folder}: not a folder of this user's that no one else may write"
            return None
        return self.folder

    def _entry(self, key: str) -> Path | None:
        folder = self._usable()
        return None if folder is None else folder / f"{PREFIX}{key}{SUFFIX}"

    def load(
        self, key: str, classes: list[str], count: int, image_size: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached (x, y) of this key, if there is a sound entry: ``count`` images of
        ``image_size`` in ``classes``."""
        path = self._entry(key)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self.note = "miss"
            return None
        except OSError as exc:
            self.note = f"{path}: {exc.strerror or exc}"
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not only_mine(st) or st.st_size > self.max_bytes:
                self.note = f"{path}: not this user's own regular file within the cache's size (ignored)"
                return None
            try:
                data = torch.load(fh, weights_only=True, map_location="cpu")
            except Exception as exc:  # a truncated or foreign file: decode afresh
                self.note = f"{path}: unreadable ({str(exc)[:100]}), decoded afresh"
                return None
        x, y = (data.get("x"), data.get("y")) if isinstance(data, dict) else (None, None)
        if (
            not isinstance(x, torch.Tensor)
            or not isinstance(y, torch.Tensor)
            or data.get("classes") != classes
            or x.dtype != torch.uint8
            or tuple(x.shape) != (count, 3, image_size, image_size)
            or y.dtype != torch.int64
            or tuple(y.shape) != (count,)
            or (count and (int(y.min()) < 0 or int(y.max()) >= len(classes)))
        ):
            self.note = f"{path}: does not match the folder's listing (ignored, decoded afresh)"
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # last use: the oldest are removed first
        return x, y

    def store(self, key: str, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> bool:
        """Keep a decoded folder (False: off, too large, or not writable; training goes on)."""
        path = self._entry(key)
        if path is None:
            return False
        size = x.numel() * x.element_size() + y.numel() * y.element_size() + OVERHEAD
        if size > self.max_bytes:
            self.note = f"{size >> 20} MiB decoded is more than training.data_cache_mb: not cached"
            return False
        self._make_room(size, path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.unlink()  # left by an earlier process of this pid
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                torch.save({"x": x.contiguous(), "y": y, "classes": list(classes)}, fh)
                fh.flush()
                written = os.fstat(fh.fileno()).st_size
            if written > self.max_bytes:  # the estimate was short: it would not be read back
                tmp.unlink()
                self.note = f"{written >> 20} MiB written is more than training.data_cache_mb: not cached"
                return False
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.note = f"{path}: {exc.strerror or exc}"
            return False
        return True

    def _make_room(self, size: int, keep: Path) -> None:
        """Remove the least recently used entries until ``size`` more bytes fit, and temporary
        files left by workers killed while writing (older than ``STALE_TMP_S``); younger ones
        (another worker writing now) count against the budget."""
        assert self.folder is not None
        entries, total, now = [], 0, time.time()
        for p in (*self.folder.glob(f"{PREFIX}*{SUFFIX}"), *self.folder.glob(f".{PREFIX}*.tmp")):
            with contextlib.suppress(OSError):
                st = p.lstat()
                if not stat.S_ISREG(st.st_mode) or p == keep:
                    continue
                if p.name.startswith("."):
                    if now - st.st_mtime > STALE_TMP_S:
                        p.unlink()
                    else:
                        total += st.st_size
                    continue
                entries.append((st.st_mtime, st.st_size, p))
        total += sum(s for _, s, _ in entries)
        for _, s, p in sorted(entries, key=lambda e: e[0]):
            if total + size <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= s
