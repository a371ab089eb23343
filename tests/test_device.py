"""Where a board trains and what its torch can do, without a GPU: device resolution, the backend
choice, the memory arithmetic (deepedge/training/_device.py), the torch probe
(deepedge/training/probe.py), and that ``import deepedge.training`` leaves torch unloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import deepedge.training

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
    )


# --- the package does not load torch until a torch-using name is used -----------------------


def test_importing_the_package_does_not_import_torch() -> None:
    r = run_python("import deepedge.training, sys; assert 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr


def test_the_worker_module_and_the_accounting_names_do_not_import_torch() -> None:
    r = run_python(
        "import sys, deepedge.training.worker\n"
        "from deepedge.training import verify_accounting, step_timing, TrainingError, AccountingLog\n"
        "assert 'torch' not in sys.modules, 'torch loaded'"
    )
    assert r.returncode == 0, r.stderr


def test_a_lazy_name_loads_torch_after_omp_wait_policy_is_set() -> None:
    r = run_python(
        "import os, sys\n"
        "import deepedge.training as t\n"
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
        "assert 'torch' not in sys.modules\n"
        "f = t.build_model\n"
        "assert 'torch' in sys.modules and 'build_model' in vars(t)\n"
        "print(f.__module__)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "deepedge.training._models"


def test_an_operator_set_omp_wait_policy_is_kept() -> None:
    r = run_python("import os, deepedge.training; print(os.environ['OMP_WAIT_POLICY'])", {"OMP_WAIT_POLICY": "ACTIVE"})
    assert r.stdout.strip() == "ACTIVE", r.stderr


def test_every_public_name_resolves_and_dir_lists_it() -> None:
    for name in deepedge.training.__all__:
        assert getattr(deepedge.training, name) is not None
    assert set(deepedge.training.__all__) <= set(dir(deepedge.training))
    with pytest.raises(AttributeError, match="no_such_name"):
        deepedge.training.no_such_name  # noqa: B018
