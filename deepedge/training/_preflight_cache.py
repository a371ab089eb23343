"""The pre-flight check's cache of what torch found (``node.preflight_cache_s``): a job whose model,
samples, base checkpoint, seeds and software are those of a check that passed on this board within
the cache's lifetime is not checked with torch again. The torch-free checks (policy, output,
dataset count, free space) always run; the cache holds only the torch part's figures (the
model's parameters and checkpoint size, and for a tensor file its sample and class counts).

Why: the torch part imports torch, builds the model and runs a forward pass (1.5 to 2.4 s of CPU,
measured to raise the board's LC apps' p95 1.4 to 2x at a job's start: docs/benchmarks/lc-scenarios.md),
and a fleet retrains the same model on the same data again and again.

The key is a hash of everything the torch part's outcome depends on: the model's name, the
class names, the identity of the sample images the check decodes (an image folder's first of
each class) or of the tensor file, the base checkpoint's identity, the seeds it checks, the
versions of torch, torchvision, Pillow, Python and deepedge, and the identity of the builtin
models' source files (an editable install keeps its version while its code changes). An identity
is (device, inode, mode, size, mtime, ctime) of the path itself, not of a symlink's target (the
checks open files without following symlinks); ctime is what ``touch -r`` cannot set back.
Nothing is decoded for the key, so the node daemon computes it too and answers a hit without
starting a checker process (``deepedge.training.preflight.cached_answer``): measured, a checker
process that only answered from the cache still raised the LC apps' p95 (docs/node.md,
"Pre-flight cache"). A ``module:callable`` model is never cached (its code is the operator's,
outside the key), nor is a check whose inputs cannot be stat'ed. The file is this board's own
(written by its checker, replaced atomically, at most MAX_ENTRIES entries); one that does not
decode, or is not the daemon user's own regular file writable by it alone, is ignored."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec

__all__ = [
    "MAX_ENTRIES",
    "Cached",
    "cache_key",
    "identity",
    "lookup",
    "only_mine",
    "package_version",
    "stat_identity",
    "store",
]

MAX_ENTRIES = 64
MAX_FILE_BYTES = 1 << 20
# the builtin models' source (not imported: they import torch)
MODELS_SOURCES = tuple(Path(__file__).with_name(name) for name in ("_models.py", "_nets.py", "_data.py"))
_Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]


class Cached(msgspec.Struct, frozen=True, kw_only=True):
    """The torch part's figures for one key."""

    at: Annotated[float, msgspec.Meta(ge=0, le=1e11)]  # time.time() of the check
    params: _Count
    checkpoint_bytes: _Count
    samples: _Count
    classes: _Count


_FILE = msgspec.json.Decoder(dict[Annotated[str, msgspec.Meta(max_length=64)], Cached])


def stat_identity(st: os.stat_result) -> list[int]:
    """A file's identity from its stat: (device, inode, mode, size, mtime, ctime)."""
    return [st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def identity(path: Path) -> list[int]:
    """The path's own identity (a symlink's, not its target's)."""
    return stat_identity(path.lstat())


def only_mine(st: os.stat_result) -> bool:
    """This user's own, and writable by no one else (no one else can plant what it holds)."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def cache_key(
    model: str,
    classes: list[str] | None,
    images: list[Path] | None,
    tensor_file: Path | None,
    base_checkpoint: Path | None,
    seeds: list[int],
    image_size: int,
) -> str | None:
    """The key of a check (None: not cacheable). ``classes`` and ``images`` (the sample images the
    check decodes) for an image folder, ``tensor_file`` for a tensor dataset. Torch-free, and
    nothing is decoded: the daemon computes it too, without a process."""
    if ":" in model:
        return None
    import deepedge

    try:
        parts: dict[str, Any] = {
            "model": model,
            "classes": classes,
            "tensor_file": identity(tensor_file) if tensor_file is not None else None,
            "images": [identity(path) for path in images or ()],
            "base_checkpoint": identity(base_checkpoint) if base_checkpoint is not None else None,
            "seeds": seeds,
            "image_size": image_size,
            "torch": package_version("torch"),
            "torchvision": package_version("torchvision"),
            "pillow": package_version("pillow"),
            "python": sys.version,
            "deepedge": deepedge.__version__,
            "models_source": [identity(path) for path in MODELS_SOURCES],
        }
    except OSError:
        return None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> dict[str, Cached]:
    """The entries, or none: a file that is not this user's own regular file, writable by no one
    else (a symlink, a FIFO, one another user could plant entries in), is not read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not only_mine(st):
            return {}
        try:
            raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError:
            return {}
    if len(raw) > MAX_FILE_BYTES:
        return {}
    try:
        return _FILE.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def lookup(path: Path, key: str, max_age_s: float, now: float | None = None) -> Cached | None:
    """The figures of a check with this key that passed within ``max_age_s``, or None."""
    now = time.time() if now is None else now
    hit = _read(path).get(key)
    if hit is None or not (0 <= now - hit.at <= max_age_s):
        return None
    return hit


def store(path: Path, key: str, figures: Cached, max_age_s: float) -> bool:
    """Add a passed check (dropping entries older than ``max_age_s`` and the oldest beyond
    MAX_ENTRIES); written to a temporary file beside it and renamed. False when it could not be
    written (the check's answer does not depend on it)."""
    entries = {k: v for k, v in _read(path).items() if 0 <= figures.at - v.at <= max_age_s}
    entries[key] = figures
    newest = dict(sorted(entries.items(), key=lambda kv: kv[1].at)[-MAX_ENTRIES:])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.encode(newest))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
