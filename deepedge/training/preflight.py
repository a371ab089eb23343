"""``python -m deepedge.training.preflight``: before a job's first plan, check on this board what
can be checked here, so a bad job is refused at submit instead of crash-looping its workers.

One JSON request on stdin (``PreflightRequest``: this node's id, the job, its spec, and the
board's own ``[training]`` policy — passed by the daemon from its configuration, never taken
from the job), one JSON line on stdout, exit 0 (ok) or 2 (refused):

    {"ok": true, "samples": N, "classes": C, "params": P, "checkpoint_bytes": B,
     "free_bytes": F, "needed_bytes": X, "seconds": t, "import_s": i, "cache": "hit"}
    {"ok": false, "check": "<check>", "reason": "node <id>: <check>: <why>", "seconds": t}

With ``--standby`` it imports torch and the model registry first, prints the worker protocol's
STANDBY_READY line and then waits, with no time limit, for its one request: the node daemon keeps
one such checker ahead of a job while the board is idle (``node.standby_checker``, off by
default), so that a job's check does not import torch while the board's LC apps run
(docs/node.md).

The checks, in order (the first that fails answers):

- ``policy``: the board's own ``[training]`` (``deepedge.job_policy.check_job``; the reason
  names the key to change);
- ``output``: the output folder can be created and written (``ensure_dir``, then a temporary
  file written with ``write_atomic`` and removed; never through a symlink);
- ``dataset``: it exists, is readable, has at least ``global_batch`` samples (an image folder's
  files are counted per class, not decoded; a tensor file is loaded with the safe loader) and
  its samples decode (the first image of each class, at most ``DECODE_IMAGES``);
- ``model``: it builds for the dataset's class count;
- ``base_checkpoint``: it loads into the model;
- ``sample``: the model takes the decoded samples (a forward pass in eval mode: shapes fit,
  the output is finite);
- ``seed``: the job's seeds make a ``torch.Generator``;
- ``disk``: the free space at the output holds what the job will write: the newest
  ``training.keep_checkpoints`` epoch checkpoints while the next is written (or ``model.pt``
  at the end), each parameters + buffers + momentum, and this node's accounting log, with a
  margin (``needed_bytes``).

``cache`` says whether the torch part (model, base_checkpoint, sample, seed) ran: "hit" (a check
of the same model, samples, base checkpoint, seeds and software passed here within
``node.preflight_cache_s``: not run again, ``deepedge.training._preflight_cache``), "stored" (run,
and cached), "unwritable" (run; the cache file could not be written), "uncacheable" (run: a
``module:callable`` model) or "off".

It imports nothing from ``deepedge.node`` or ``deepedge.transport``; torch only once the
torch-free checks have passed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from deepedge.broker_schemas import JobSpec
from deepedge.config import TrainingConfig
from deepedge.job_policy import CheckedJob, JobRefused, check_job
from deepedge.training._errors import TrainingError
from deepedge.training._files import ensure_dir, write_atomic
from deepedge.training._folder import IMAGE_SUFFIXES, FolderError, list_classes, open_image
from deepedge.training._preflight_cache import Cached, cache_key, lookup, store
from deepedge.worker_protocol import STANDBY_READY

__all__ = [
    "DECODE_IMAGES",
    "IMAGE_SIZE",
    "PreflightRequest",
    "Refused",
    "cached_answer",
    "free_bytes",
    "main",
    "needed_bytes",
    "preflight",
]

DECODE_IMAGES = 16  # images decoded from an image folder: the first of each class, at most this many
FORWARD_SAMPLES = 4  # of them through the model
IMAGE_SIZE = 32  # as the worker loads them (deepedge.training._data.load_dataset)
MARGIN = 1.1  # needed bytes: what the job writes * this, + MARGIN_BYTES
MARGIN_BYTES = 1 << 20


class PreflightRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    node: str
    job: str
    spec: JobSpec
    policy: TrainingConfig  # the board's own [training], from its daemon's configuration
    cache: str = ""  # node.preflight_cache_path: the torch part's cache (empty: none)
    cache_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0  # node.preflight_cache_s


class Refused(Exception):
    """A check failed: ``check`` names it, the message says why."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass
class _Samples:
    count: int
    classes: list[str]
    x: Any  # (n, C, H, W) uint8 or float tensor of decoded samples, n >= 1
    shown: str  # which samples, for messages


@dataclass
class _Folder:
    """An image folder, counted and sampled without torch."""

    root: Path
    count: int
    classes: list[str]
    firsts: list[Path]  # the first image of each class (at most DECODE_IMAGES): decoded for the checks


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def needed_bytes(checkpoint: int, keep: int, samples: int, epochs: int, global_batch: int) -> int:
    """What a job writes at most at its output, with the margin: ``keep`` epoch checkpoints
    and the one being written (the next epoch's, or model.pt), and this node's accounting log
    (every step records every node's sample ids: ``epochs * samples`` ids, and ~200 bytes a step)."""
    steps = epochs * math.ceil(samples / global_batch)
    accounting = epochs * samples * (len(str(max(0, samples - 1))) + 2) + steps * 200
    return math.ceil(((keep + 1) * checkpoint + accounting) * MARGIN) + MARGIN_BYTES


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ---- the checks ----------------------------------------------------------------------------------


def _check_output(output: Path, node: str) -> None:
    try:
        ensure_dir(output)
        probe = output / f".preflight-{node}-{os.getpid()}-{secrets.token_hex(4)}"  # the daemon checks in threads
        with write_atomic(probe) as fh:
            fh.write(b"deepedge preflight\n")
        probe.unlink(missing_ok=True)
    except TrainingError as exc:
        raise Refused("output", str(exc)) from None
    except OSError as exc:
        raise Refused("output", f"output folder {output}: {exc.strerror or exc}") from None


def _image_folder(root: Path, global_batch: int) -> _Folder:
    try:
        listed = list_classes(root)
    except FolderError as exc:
        raise Refused("dataset", str(exc)) from None
    count = sum(len(images) for _, images in listed)
    firsts = [images[0] for _, images in listed if images][:DECODE_IMAGES]
    if count == 0:
        raise Refused("dataset", f"dataset {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if count < global_batch:
        raise Refused("dataset", f"dataset {root} has {count} samples, fewer than the global batch {global_batch}")
    return _Folder(root, count, [name for name, _ in listed], firsts)


def _decode(path: Path, root: Path) -> bytes:
    """One image as the worker decodes it (RGB, resized), opened without following symlinks."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(path) as fh, Image.open(fh) as img:
            pixels: bytes = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)).tobytes()
            return pixels
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise Refused("dataset", f"dataset {root}: unreadable image {path}: {exc}") from None


def _folder_samples(folder: _Folder, images: list[bytes]) -> _Samples:
    import torch

    x = torch.stack([torch.frombuffer(bytearray(b), dtype=torch.uint8).view(IMAGE_SIZE, IMAGE_SIZE, 3) for b in images])
    shown = f"{len(images)} images (the first of each class)"
    return _Samples(folder.count, folder.classes, x.permute(0, 3, 1, 2).contiguous(), shown)


def _tensor_file(path: Path, global_batch: int) -> _Samples:
    from deepedge.training._data import load_dataset

    try:
        data = load_dataset(str(path))
    except TrainingError as exc:
        raise Refused("dataset", str(exc)) from None
    if len(data) < global_batch:
        raise Refused("dataset", f"dataset {path} has {len(data)} samples, fewer than the global batch {global_batch}")
    if len(data) == 0:
        raise Refused("dataset", f"dataset {path}: no samples")
    return _Samples(len(data), data.classes, data.x[:FORWARD_SAMPLES], "its first samples")


def _dataset(path: Path, global_batch: int) -> _Folder | Path:
    """An image folder counted and sampled (torch-free), or the tensor file to load."""
    if path.is_dir():
        return _image_folder(path, global_batch)
    if path.is_file():
        return path
    if path.exists():
        raise Refused("dataset", f"dataset {path}: not a file or folder")
    raise Refused("dataset", f"dataset {path}: no such file or folder")


def _forward(model: Any, samples: _Samples) -> None:
    import torch

    from deepedge.training._data import TensorDataset

    n = min(FORWARD_SAMPLES, len(samples.x))
    ds = TensorDataset(samples.x[:n], torch.zeros(n, dtype=torch.long), samples.classes)
    x, _ = ds.batch(torch.arange(n))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise Refused("sample", f"the model does not take {samples.shown} of the dataset: {str(exc)[:300]}") from None
    if tuple(out.shape) != (n, len(samples.classes)):
        raise Refused(
            "sample", f"the model gives {tuple(out.shape)} for {n} samples, not ({n}, {len(samples.classes)}) classes"
        )
    if not bool(torch.isfinite(out).all()):
        raise Refused("sample", f"the model's output for {samples.shown} is not finite")


def _torch_checks(
    spec: JobSpec, checked: CheckedJob, dataset: _Folder | Path, seeds: list[int]
) -> tuple[Cached, float]:
    """The checks that need torch (model, base_checkpoint, sample, seed), an image folder's
    samples decoded first (without torch): their figures and the seconds torch and the model
    registry took to import."""
    images = [_decode(path, dataset.root) for path in dataset.firsts] if isinstance(dataset, _Folder) else []
    t = time.perf_counter()
    import torch

    from deepedge.training._models import build_model, load_checkpoint

    import_s = time.perf_counter() - t
    samples = (
        _folder_samples(dataset, images) if isinstance(dataset, _Folder) else _tensor_file(dataset, spec.global_batch)
    )
    try:
        model = build_model(spec.model, len(samples.classes))
    except TrainingError as exc:
        raise Refused("model", str(exc)) from None
    except Exception as exc:  # a module:callable factory may raise anything
        raise Refused("model", f"model {spec.model!r}: {type(exc).__name__}: {str(exc)[:300]}") from None
    if checked.base_checkpoint is not None:
        try:
            load_checkpoint(model, checked.base_checkpoint)
        except TrainingError as exc:
            raise Refused("base_checkpoint", str(exc)) from None
    _forward(model, samples)
    try:
        for seed in seeds:
            torch.Generator().manual_seed(seed)
    except (RuntimeError, OverflowError, ValueError) as exc:
        raise Refused("seed", f"seed {spec.seed} does not make a torch.Generator seed: {exc}") from None
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    figures = Cached(
        at=time.time(),
        params=params,
        checkpoint_bytes=state + momentum,
        samples=samples.count,
        classes=len(samples.classes),
    )
    return figures, import_s


def preflight(req: PreflightRequest, torch: bool = True) -> dict[str, Any] | None:
    """Run the checks; the answer (without ``seconds``). Raises Refused. With ``torch=False``
    (the daemon's own try at the cache, without a process) None where the torch part would run."""
    spec = req.spec
    try:
        checked = check_job(spec, req.policy)
    except JobRefused as exc:
        raise Refused("policy", str(exc)) from None
    _check_output(checked.output, req.node)
    dataset = _dataset(checked.dataset, spec.global_batch)
    seeds = [spec.seed * 1_000_003 + epoch for epoch in (0, spec.epochs - 1)]  # as the trainer draws its permutations
    cache = Path(req.cache) if req.cache and req.cache_s > 0 else None
    key = None
    if cache is not None:
        folder = dataset if isinstance(dataset, _Folder) else None
        key = cache_key(
            spec.model,
            folder.classes if folder else None,
            folder.firsts if folder else None,
            None if folder else checked.dataset,
            checked.base_checkpoint,
            seeds,
            IMAGE_SIZE,
        )
    figures = lookup(cache, key, req.cache_s) if cache is not None and key is not None else None
    import_s = 0.0
    if figures is not None:
        how = "hit"
    elif not torch:
        return None
    else:
        figures, import_s = _torch_checks(spec, checked, dataset, seeds)
        if cache is None:
            how = "off"
        elif key is None:
            how = "uncacheable"
        else:
            how = "stored" if store(cache, key, figures, req.cache_s) else "unwritable"
    count = dataset.count if isinstance(dataset, _Folder) else figures.samples
    if count < spec.global_batch:  # a cached tensor file's count, against this job's batch
        raise Refused(
            "dataset", f"dataset {checked.dataset} has {count} samples, fewer than the global batch {spec.global_batch}"
        )
    checkpoint = figures.checkpoint_bytes
    needed = needed_bytes(checkpoint, req.policy.keep_checkpoints, count, spec.epochs, spec.global_batch)
    try:
        free = free_bytes(checked.output)
    except OSError as exc:
        raise Refused("disk", f"free space at {checked.output}: {exc.strerror or exc}") from None
    if free < needed:
        raise Refused(
            "disk",
            f"needs {_mb(needed)} free at {checked.output} ({req.policy.keep_checkpoints} + 1 checkpoints of "
            f"{_mb(checkpoint)}, the accounting log, a margin), has {_mb(free)}",
        )
    return {
        "ok": True,
        "samples": count,
        "classes": figures.classes,
        "params": figures.params,
        "checkpoint_bytes": checkpoint,
        "free_bytes": free,
        "needed_bytes": needed,
        "import_s": round(import_s, 3),
        "cache": how,
    }


def answer(raw: bytes) -> tuple[dict[str, Any], int]:
    """The JSON answer to one request line and the exit code."""
    result = _answer(raw, torch=True)
    assert result is not None  # with torch, every request has an answer
    return result


def cached_answer(raw: bytes) -> tuple[dict[str, Any], int] | None:
    """:func:`answer` without torch, for the daemon to try before it starts a checker: the answer
    of a request whose torch part is in the cache, or whose torch-free checks refuse it; None
    where the torch part must run."""
    return _answer(raw, torch=False)


def _answer(raw: bytes, torch: bool) -> tuple[dict[str, Any], int] | None:
    t0 = time.perf_counter()
    node = "?"
    try:
        req = msgspec.json.decode(raw, type=PreflightRequest)
        node = req.node
        passed = preflight(req, torch)
        if passed is None:
            return None
        result, code = passed, 0
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        result, code = _refusal(node, "request", f"not a preflight request: {exc}"), 2
    except Refused as exc:
        result, code = _refusal(node, exc.check, str(exc)), 2
    except OSError as exc:  # anything the checks did not foresee on this board's files
        check = "disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "internal"
        result, code = _refusal(node, check, f"{type(exc).__name__}: {exc}"), 2
    except Exception as exc:  # a bug: still an answer, naming it
        result, code = _refusal(node, "internal", f"{type(exc).__name__}: {str(exc)[:500]}"), 2
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result, code


def _refusal(node: str, check: str, why: str) -> dict[str, Any]:
    return {"ok": False, "check": check, "reason": f"node {node}: {check}: {why}"[:4000]}


def main(argv: list[str] | None = None) -> int:
    standby = "--standby" in (sys.argv[1:] if argv is None else argv)
    if standby:  # a standby checker (deepedge.node._standby): the imports done while the board is idle
        import torch  # noqa: F401

        import deepedge.training._models  # noqa: F401

        print(STANDBY_READY, flush=True)
    line = sys.stdin.buffer.readline(1 << 20)  # a standby's request comes whenever a job does
    if standby and not line:
        return 0  # stdin closed: the daemon is gone
    result, code = answer(line)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: the interpreter's teardown after torch took 0.4 s of the answer
