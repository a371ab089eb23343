"""What a training job may name on this board. The board decides, from its own configuration
(``[training]``), never from the job: the model must be on its allow-list (``training.models``, or
a ``module:callable`` whose module lies under ``training.model_modules``), the dataset and a
base checkpoint inside ``training.data_roots``, the output inside ``training.output_root``, every
path after its symlinks are resolved. A refusal names the configuration key to change.

Used by the node daemon before it starts a worker and again by the worker itself (which also
opens its files without following symlinks, see ``deepedge.training._files``). Imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepedge.broker_schemas import JobSpec
from deepedge.config import TrainingConfig
from deepedge.errors import DeepEdgeError

__all__ = ["CheckedJob", "JobRefused", "check_job", "check_model", "inside"]


class JobRefused(DeepEdgeError):
    """This board will not run the job; the message says why and which key would allow it."""


@dataclass(frozen=True, slots=True)
class CheckedJob:
    dataset: Path
    output: Path
    base_checkpoint: Path | None


def check_model(name: str, policy: TrainingConfig) -> None:
    if name in policy.models:
        return
    module, sep, attr = name.partition(":")
    if sep and module and attr:
        if any(module == p or module.startswith(p + ".") for p in policy.model_modules if p):
            return
        raise JobRefused(
            f"model {name!r}: module {module!r} is not under training.model_modules "
            f"({', '.join(policy.model_modules) or 'empty'}) on this board"
        )
    raise JobRefused(f"model {name!r} is not in training.models ({', '.join(policy.models)}) on this board")


def inside(path: str, roots: tuple[str, ...], what: str, key: str) -> Path:
    """``path`` with its symlinks resolved, if that lies inside one of ``roots`` (also resolved);
    else JobRefused naming ``key``."""
    if not path or not os.path.isabs(path):
        raise JobRefused(f"{what} {path!r} is not an absolute path")
    real = Path(os.path.realpath(path))
    for root in roots:
        base = Path(os.path.realpath(root))
        if real == base or base in real.parents:
            return real
    shown = f" (resolves to {real})" if str(real) != os.path.normpath(path) else ""
    raise JobRefused(f"{what} {path}{shown} is outside {key} ({', '.join(roots) or 'empty'}) on this board")


def check_job(spec: JobSpec, policy: TrainingConfig) -> CheckedJob:
    """Raise JobRefused unless this board may run ``spec``; the resolved paths otherwise."""
    check_model(spec.model, policy)
    dataset = inside(spec.dataset, policy.data_roots, "dataset", "training.data_roots")
    output = inside(spec.output, (policy.output_root,), "output", "training.output_root")
    if policy.data_cache_dir:
        cache = Path(os.path.realpath(policy.data_cache_dir))
        for what, path in (("output", output), ("dataset", dataset)):
            if path == cache or cache in path.parents:
                raise JobRefused(
                    f"{what} {getattr(spec, what)} overlaps training.data_cache_dir ({policy.data_cache_dir}) on "
                    "this board: the decoded-dataset cache is the workers' own"
                )
    base = None
    if spec.base_checkpoint:
        base = inside(
            spec.base_checkpoint,
            (*policy.data_roots, policy.output_root),
            "base checkpoint",
            "training.data_roots / training.output_root",
        )
    return CheckedJob(dataset, output, base)
