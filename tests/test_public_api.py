"""Each package's public surface is exactly what its ``__all__`` says, and the packages keep
the dependency rules of the design."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGES = [
    "deepedge.broker_schemas",
    "deepedge.transport",
    "deepedge.config",
    "deepedge.node",
    "deepedge.node.collectors",
    "deepedge.bench",
    "deepedge.coordinator",
    "deepedge.coordinator.planner",
    "deepedge.ops",
    "deepedge.training",
]
SRC = Path(__file__).resolve().parent.parent / "deepedge"


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_the_public_surface(name: str) -> None:
    mod = importlib.import_module(name)
    # dir(), not vars(): deepedge.training loads its torch-using names on first use (PEP 562) and
    # lists them in its __dir__
    public = {n for n in dir(mod) if not n.startswith("_")} - {m.split(".")[-1] for m in _submodules(name)}
    assert set(mod.__all__) == public
    assert len(mod.__all__) == len(set(mod.__all__))


def _submodules(name: str) -> list[str]:
    folder = SRC / name.split(".", 1)[1].replace(".", "/")
    modules = [f"{name}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"]
    return modules + [f"{name}.{p.parent.name}" for p in folder.glob("*/__init__.py")]


def _imports(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_broker_schemas_import_no_clients_torch_or_cvxpy() -> None:
    assert not _imports(SRC / "broker_schemas") & {"paho", "aiomqtt", "torch", "cvxpy"}


def test_only_transport_imports_mqtt_clients() -> None:
    # bench/ holds the baseline agent of `deepedge bench daemon`: a bare paho client on purpose.
    for pkg in SRC.iterdir():
        if pkg.is_dir() and pkg.name not in ("transport", "bench", "__pycache__"):
            assert not _imports(pkg) & {"paho", "aiomqtt"}, pkg.name


def test_node_daemon_does_not_import_torch() -> None:
    assert "torch" not in _imports(SRC / "node")


def test_training_knows_nothing_about_mqtt() -> None:
    assert not _imports(SRC / "training") & {"paho", "aiomqtt"}
    assert not any(
        "deepedge.transport" in line
        for p in (SRC / "training").rglob("*.py")
        for line in p.read_text().splitlines()
        if line.startswith(("import", "from"))
    )
