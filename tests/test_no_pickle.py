"""Nothing received from a peer is ever unpickled or executed: no pickle-based API anywhere in
the package, and every torch.load asks for weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deepedge"

# torch.distributed's object collectives pickle what they send and unpickle what they receive.
FORBIDDEN = re.compile(
    r"broadcast_object_list|all_gather_object|gather_object|scatter_object_list|send_object_list|"
    r"recv_object_list|\bpickle\b|cPickle|\bmarshal\b|\bshelve\b|\bdill\b|cloudpickle|(?<![.\w])eval\(|(?<![.\w])exec\("
)
TORCH_LOAD = re.compile(r"torch\.load\(([^)]*)\)")


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]


def test_the_scan_sees_the_package() -> None:
    sources = _sources()
    assert len(sources) > 50
    assert any("dist.broadcast(" in text for _, text in sources)  # the state sync is in there


def test_no_pickle_based_api_in_the_package() -> None:
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path, text in _sources()
        for n, line in enumerate(text.splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert hits == []


def test_every_torch_load_is_weights_only() -> None:
    calls = [(path, m.group(1)) for path, text in _sources() for m in TORCH_LOAD.finditer(text)]
    assert calls, "expected torch.load somewhere (checkpoints, datasets)"
    assert [str(p) for p, args in calls if "weights_only=True" not in args] == []


def test_the_patterns_would_catch_what_they_are_for() -> None:
    for bad in ("dist.broadcast_object_list(meta, src=0)", "import pickle", "eval(x)"):
        assert FORBIDDEN.search(bad)
    assert FORBIDDEN.search("model.eval()") is None  # a torch module's mode, not Python's eval
    assert TORCH_LOAD.search("torch.load(path)") is not None
