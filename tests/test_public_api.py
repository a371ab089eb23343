"""Each package's public surface is exactly what its ``__all__`` says, and the packages keep
the dependency rules of the design (DESIGN.md, "Packages").

The rules are checked on the full import graph: every ``import`` and ``from … import`` anywhere in
a module (inside functions and ``TYPE_CHECKING`` blocks too: a lazy import is still a dependency),
relative imports resolved, ``importlib.import_module("…")`` with a literal name included, and each
import kept to its full dotted name: reduced to its first name, every import between deepedge
packages was just ``deepedge``, and ``deepedge.coordinator._run`` importing ``deepedge.node``
(SystemdNotifier, since moved to ``deepedge.sdnotify``) went unseen. Then again at run time, in a
fresh interpreter: what importing a package really loads."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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
    "deepedge.profiling",
    "deepedge.training",
    "deepedge.netem",
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


# ---- the import graph -----------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


@dataclass(frozen=True)
class Import:
    importer: str  # the module, dotted
    imported: str  # what it imports, its full dotted name
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def imports_of(name: str) -> Iterator[Import]:
    """Every import in module ``name``, wherever it is in the module."""
    path = MODULES[name]
    return imports_in(name, path.read_text(), package=path.name == "__init__.py")


def imports_in(name: str, source: str, *, package: bool = False) -> Iterator[Import]:
    """Every import in the source of module ``name`` (``package``: an ``__init__.py``)."""
    home = name if package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its package, up level - 1
                parts = home.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"  # `from pkg import module` imports the module
                yield Import(name, sub if sub in MODULES else origin, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and _dotted(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(name, node.args[0].value, node.lineno)


GRAPH = [imp for name in sorted(MODULES) for imp in imports_of(name)]


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(importers: tuple[str, ...], forbidden: tuple[str, ...], *, exempt: tuple[str, ...] = ()) -> list[str]:
    """The imports from modules under ``importers`` (but not ``exempt``) of anything under
    ``forbidden``, as "X imports Y (line N)"."""
    return [
        str(imp)
        for imp in GRAPH
        if under(imp.importer, importers) and not under(imp.importer, exempt) and under(imp.imported, forbidden)
    ]


SERVICES = (
    "deepedge.transport",
    "deepedge.node",
    "deepedge.coordinator",
    "deepedge.training",
    "deepedge.ops",
    "deepedge.demo",
    "deepedge.bench",
    "deepedge.cli",
)
MQTT_CLIENTS = ("paho", "aiomqtt")
# Benchmark baselines, bare paho on purpose: the daemon bench's agent, the ingest bench's
# subscriber and its load generator.
MQTT_BASELINES = ("deepedge.bench._baseline_agent", "deepedge.bench._ingest", "deepedge.bench._ingest_publisher")
RULES = {
    "broker_schemas imports no service package, MQTT client, torch or cvxpy": (
        ("deepedge.broker_schemas",),
        (*SERVICES, *MQTT_CLIENTS, "torch", "cvxpy"),
    ),
    "node does not import coordinator": (("deepedge.node",), ("deepedge.coordinator",)),
    "coordinator does not import node": (("deepedge.coordinator",), ("deepedge.node",)),
    "node does not import torch": (("deepedge.node",), ("torch",)),
    "coordinator imports neither training nor torch": (("deepedge.coordinator",), ("deepedge.training", "torch")),
    "training knows nothing about MQTT": (("deepedge.training",), ("deepedge.transport", *MQTT_CLIENTS)),
    "netem (namespaces, links, cgroups) imports no service package, MQTT client or torch": (
        ("deepedge.netem",),
        (*SERVICES, *MQTT_CLIENTS, "torch"),
    ),
    # the node daemon runs stressors and measurements; fitting (scikit-learn, statsmodels) is
    # the profiling package's, used by the CLI and the coordinator
    "node does not import the model fitting": (
        ("deepedge.node",),
        ("sklearn", "statsmodels", "scipy", "deepedge.profiling._surrogate", "deepedge.profiling._session"),
    ),
    "profiling knows nothing about MQTT, torch or the services": (
        ("deepedge.profiling",),
        ("torch", *MQTT_CLIENTS, "deepedge.node", "deepedge.coordinator", "deepedge.training"),
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_dependency_rule(rule: str) -> None:
    importers, forbidden = RULES[rule]
    found = violations(importers, forbidden)
    assert not found, f"{rule}:\n" + "\n".join(found)


def test_only_transport_imports_mqtt_clients() -> None:
    found = violations(("deepedge",), MQTT_CLIENTS, exempt=("deepedge.transport", *MQTT_BASELINES))
    assert not found, "only deepedge.transport imports paho/aiomqtt:\n" + "\n".join(found)


def test_the_graph_sees_what_reducing_to_first_names_missed() -> None:
    pairs = {(i.importer, i.imported) for i in GRAPH}
    # full dotted names: reduced to the first one, every arrow between packages was deepedge -> deepedge
    assert ("deepedge.coordinator._run", "deepedge.transport") in pairs
    assert ("deepedge.cli", "deepedge.coordinator") in pairs  # inside coordinator_cmd: a lazy import
    source = "def f():\n    from .. import config\n    from . import _tables\n    from .x import y\n"
    found = {i.imported for i in imports_in("deepedge.ops._request", source)}
    assert found == {"deepedge.config", "deepedge.ops._tables", "deepedge.ops.x"}  # relative, resolved
    assert {i.imported for i in imports_in("deepedge.ops", "from . import _tables", package=True)} == {
        "deepedge.ops._tables"
    }


# ---- at run time ----------------------------------------------------------------------------


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


@pytest.fixture(scope="module")
def coordinator_modules() -> set[str]:
    return loaded_after("import deepedge.coordinator")


def test_importing_the_coordinator_loads_no_torch(coordinator_modules: set[str]) -> None:
    assert not {m for m in coordinator_modules if under(m, ("torch", "deepedge.training"))}


def test_importing_the_coordinator_loads_no_node_module(coordinator_modules: set[str]) -> None:
    loaded = sorted(m for m in coordinator_modules if under(m, ("deepedge.node",)))
    assert not loaded, f"import deepedge.coordinator loads {', '.join(loaded)}"


def test_importing_the_wire_contract_loads_no_client_torch_or_cvxpy() -> None:
    loaded = loaded_after("import deepedge.broker_schemas")
    assert not {m for m in loaded if under(m, (*MQTT_CLIENTS, "torch", "cvxpy", *SERVICES))}


def test_importing_the_coordinator_loads_no_model_fitting(coordinator_modules: set[str]) -> None:
    # it plans with the knowledge base's compiled tables; statsmodels loads on a first forecast
    assert not {m for m in coordinator_modules if under(m, ("sklearn", "statsmodels", "torch"))}


def test_importing_training_loads_no_mqtt() -> None:
    loaded = loaded_after("import deepedge.training")
    assert not {m for m in loaded if under(m, (*MQTT_CLIENTS, "deepedge.transport"))}
