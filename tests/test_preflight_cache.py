"""The pre-flight check's cache (``node.preflight_cache_s``): a check that passed is not run with
torch again for the same model, samples, base checkpoint, seeds and software; anything of those
that changes, an expired or damaged cache, and a refusal all run the checks again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from PIL import Image

from deepedge.training import _preflight_cache as pc
from deepedge.training import preflight as pf
from tests.test_preflight import make_board, policy, request

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def board(tmp_path: Path) -> dict[str, Path]:
    return make_board(tmp_path)


def cached_request(board: dict[str, Path], cache: Path, cache_s: float = 3600.0, **spec: Any) -> bytes:
    fields = msgspec.json.decode(request(board, **spec))
    return msgspec.json.encode({**fields, "cache": str(cache), "cache_s": cache_s})


def ok(raw: bytes) -> dict[str, Any]:
    result, code = pf.answer(raw)
    assert code == 0 and result["ok"] is True, result
    return result


def figures(result: dict[str, Any]) -> tuple[int, ...]:
    return tuple(result[k] for k in ("samples", "classes", "params", "checkpoint_bytes", "needed_bytes"))


def test_a_passed_check_is_answered_from_the_cache_without_importing_torch(
    board: dict[str, Path],
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache.json"
    raw = cached_request(board, cache)
    code = (
        "import json, sys\n"
        "from deepedge.training import preflight as pf\n"
        "result, code = pf.answer(sys.stdin.buffer.read())\n"
        "print(json.dumps({'result': result, 'code': code, 'torch': 'torch' in sys.modules}))\n"
    )

    def checker() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", code], input=raw, capture_output=True, check=True, cwd=ROOT)
        answer: dict[str, Any] = json.loads(out.stdout)
        assert answer["code"] == 0 and answer["result"]["ok"] is True, answer
        return answer

    first, second = checker(), checker()
    assert first["torch"] is True and first["result"]["cache"] == "stored" and first["result"]["import_s"] > 0
    assert second["torch"] is False and second["result"]["cache"] == "hit" and second["result"]["import_s"] == 0
    assert figures(second["result"]) == figures(first["result"])
    assert second["result"]["seconds"] < first["result"]["seconds"]
    assert oct(cache.stat().st_mode & 0o777) == "0o600"


def test_what_the_torch_part_depends_on_changes_the_key(board: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    assert ok(cached_request(board, cache))["cache"] == "stored"
    assert ok(cached_request(board, cache))["cache"] == "hit"
    assert ok(cached_request(board, cache, epochs=3))["cache"] == "stored"  # another last epoch's seed
    assert ok(cached_request(board, cache, seed=5))["cache"] == "stored"
    assert ok(cached_request(board, cache, model="resnet18"))["cache"] == "stored"
    # a decoded image changes: the samples the forward pass takes are others
    Image.new("RGB", (20, 16), (1, 2, 3)).save(board["imgs"] / "class0" / "000.png")
    assert ok(cached_request(board, cache))["cache"] == "stored"
    assert ok(cached_request(board, cache))["cache"] == "hit"
    # an image that is not decoded (not the first of its class) is counted, not part of the key
    Image.new("RGB", (20, 16), (9, 9, 9)).save(board["imgs"] / "class0" / "zzz.png")
    hit = ok(cached_request(board, cache))
    assert hit["cache"] == "hit" and hit["samples"] == 41  # the count is fresh
    assert ok(cached_request(board, cache, output=str(board["out"] / "other")))["cache"] == "hit"  # output: torch-free
    assert len(msgspec.json.decode(cache.read_bytes())) == 5  # the first, epochs 3, seed 5, resnet18, the new image


def test_a_tensor_file_and_base_checkpoint_are_keyed_by_their_identity(
    board: dict[str, Path],
    tmp_path: Path,
) -> None:
    import torch

    from deepedge.training import build_model

    cache = tmp_path / "cache.json"
    data, base = board["data"] / "t.pt", board["data"] / "base.pt"
    torch.save({"x": torch.randint(0, 255, (24, 3, 8, 8), dtype=torch.uint8), "y": torch.arange(24) % 3}, data)
    torch.save(build_model("cnn-small", 3).state_dict(), base)
    kw: dict[str, Any] = {"dataset": str(data), "base_checkpoint": str(base)}
    first = ok(cached_request(board, cache, **kw))
    hit = ok(cached_request(board, cache, **kw))
    assert (first["cache"], hit["cache"]) == ("stored", "hit") and figures(hit) == figures(first)
    assert (hit["samples"], hit["classes"]) == (24, 3)
    # the cached count is held to this job's batch
    result, code = pf.answer(cached_request(board, cache, global_batch=32, **kw))
    assert code == 2 and result["check"] == "dataset", result
    assert "24 samples, fewer than the global batch 32" in result["reason"]
    # a checkpoint written again (other bytes, same size) is checked again, and refused
    torch.save(build_model("cnn-small", 5).state_dict(), base)
    result, code = pf.answer(cached_request(board, cache, **kw))
    assert code == 2 and result["check"] == "base_checkpoint", result
    # the tensor file replaced: checked again
    torch.save({"x": torch.zeros(24, 1, 8, 8), "y": torch.arange(24) % 3}, data)
    result, code = pf.answer(cached_request(board, cache, dataset=str(data)))
    assert code == 2 and result["check"] == "sample", result


def test_a_refusal_is_never_cached(board: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    spec = {"model": "no-such-net"}
    pol = policy(board, models=("cnn-small", "no-such-net"))
    for _ in range(2):
        fields = msgspec.json.decode(request(board, pol, **spec))
        result, code = pf.answer(msgspec.json.encode({**fields, "cache": str(cache), "cache_s": 3600.0}))
        assert code == 2 and result["check"] == "model", result
    assert not cache.exists()


def test_an_expired_damaged_or_unwritable_cache_runs_the_checks(board: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    assert ok(cached_request(board, cache))["cache"] == "stored"
    entries = json.loads(cache.read_text())
    (key,) = entries
    cache.write_text(json.dumps({key: {**entries[key], "at": time.time() - 100}}))
    assert ok(cached_request(board, cache, cache_s=60))["cache"] == "stored"  # older than cache_s
    assert ok(cached_request(board, cache, cache_s=60))["cache"] == "hit"
    for damage in (b"{not json", json.dumps({key: {**entries[key], "params": -1}}).encode(), b"[]"):
        cache.write_bytes(damage)
        assert ok(cached_request(board, cache))["cache"] == "stored"
    cache.write_bytes(b" " * (pc.MAX_FILE_BYTES + 1))  # too long: not read
    assert ok(cached_request(board, cache))["cache"] == "stored"
    assert ok(cached_request(board, cache))["cache"] == "hit"
    missing = tmp_path / "no-such-dir" / "cache.json"
    assert ok(cached_request(board, missing))["cache"] == "unwritable"
    assert ok(cached_request(board, cache, cache_s=0))["cache"] == "off"
    assert ok(request(board))["cache"] == "off"  # a request without a cache (an older daemon's)


def test_a_symlink_in_place_of_the_cache_is_not_written_through(board: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    cache = tmp_path / "cache.json"
    assert ok(cached_request(board, cache))["cache"] == "stored"
    cache.unlink()
    cache.symlink_to(target)
    assert ok(cached_request(board, cache))["cache"] == "stored"  # replaced by a file of its own
    assert target.read_text() == "keep me" and not cache.is_symlink()


def test_the_cache_keeps_its_newest_entries_and_drops_expired_ones(tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    now = time.time()
    for i in range(pc.MAX_ENTRIES + 5):
        assert pc.store(cache, f"k{i}", pc.Cached(at=now + i, params=i, checkpoint_bytes=1, samples=1, classes=1), 3600)
    kept = msgspec.json.decode(cache.read_bytes())
    assert len(kept) == pc.MAX_ENTRIES and "k0" not in kept and f"k{pc.MAX_ENTRIES + 4}" in kept
    later = pc.Cached(at=now + 7200, params=0, checkpoint_bytes=1, samples=1, classes=1)
    assert pc.store(cache, "late", later, 3600)
    assert list(msgspec.json.decode(cache.read_bytes())) == ["late"]  # the rest expired
    assert pc.lookup(cache, "late", 3600, now=now + 7200 + 3601) is None
    assert pc.cache_key("acme.nets:build", None, None, None, None, [0], 32) is None  # operator code: never
    assert not list(tmp_path.glob(".*.tmp")) and os.listdir(tmp_path) == ["cache.json"]


@pytest.mark.parametrize("bad", [-1.0, 30 * 86400 + 1.0])
def test_the_cache_lifetime_is_bounded(board: dict[str, Path], tmp_path: Path, bad: float) -> None:
    result, code = pf.answer(cached_request(board, tmp_path / "c.json", cache_s=bad))
    assert code == 2 and result["check"] == "request", result


async def test_the_daemon_answers_a_cached_check_without_starting_a_checker(
    board: dict[str, Path], tmp_path: Path
) -> None:
    """The node's runner tries the cache itself (torch-free, in a thread): its checker command
    here cannot answer at all, so only a job whose torch part is cached passes."""
    from deepedge.config import NodeConfig
    from deepedge.node._preflight import Preflights
    from tests.test_preflight import spec

    cache = tmp_path / "cache.json"
    runner = Preflights("n1", NodeConfig(preflight_cache_path=str(cache)), policy(board))
    runner.command = lambda: ("false",)  # type: ignore[method-assign]  # deepedge's checker, unable to answer
    miss = await runner.run("j1", spec(board))
    assert miss["ok"] is False and miss["check"] == "internal", miss  # the checker ran: `false`
    assert ok(cached_request(board, cache, epochs=1))["cache"] == "stored"  # as a real checker would
    hit = await runner.run("j1", spec(board))
    assert hit == {**hit, "ok": True, "node": "n1", "cache": "hit", "import_s": 0, "samples": 40}, hit
    assert hit["wall_s"] < 1
    # torch-free refusals are answered the same way, with the cache's key not needed
    small = await runner.run("j2", spec(board, global_batch=64))
    assert small["check"] == "dataset" and "fewer than the global batch 64" in small["reason"]
    off = Preflights("n1", NodeConfig(preflight_cache_s=0, preflight_cache_path=str(cache)), policy(board))
    off.command = lambda: ("false",)  # type: ignore[method-assign]
    assert (await off.run("j1", spec(board)))["check"] == "internal"  # cache off: always the checker
    # an operator's own checker is never bypassed: it answers even what the cache holds
    theirs = Preflights("n1", NodeConfig(preflight_command=("false",), preflight_cache_path=str(cache)), policy(board))
    assert (await theirs.run("j1", spec(board)))["check"] == "internal"


def test_a_cache_file_others_could_write_or_a_symlinked_checkpoint_is_not_trusted(
    board: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    from deepedge.training import build_model

    cache = tmp_path / "cache.json"
    assert ok(cached_request(board, cache))["cache"] == "stored"
    cache.chmod(0o620)  # group-writable: another user could plant entries
    assert ok(cached_request(board, cache))["cache"] == "stored"  # not read, written anew (0600)
    assert ok(cached_request(board, cache))["cache"] == "hit"
    base = board["data"] / "base.pt"
    torch.save(build_model("cnn-small", 4).state_dict(), base)
    assert ok(cached_request(board, cache, base_checkpoint=str(base)))["cache"] == "stored"
    real = board["data"] / "real.pt"
    base.rename(real)
    base.symlink_to(real)  # the same bytes behind a symlink: the symlink's own identity, checked again
    assert ok(cached_request(board, cache, base_checkpoint=str(base)))["cache"] == "stored"


async def test_a_hung_torch_free_check_in_the_daemon_answers_timeout(
    board: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepedge.config import NodeConfig
    from deepedge.node import _preflight
    from deepedge.node._preflight import Preflights
    from tests.test_preflight import spec

    release = threading.Event()

    def hung(raw: bytes) -> None:  # as on a hung network mount
        release.wait(10)

    monkeypatch.setattr(_preflight, "cached_answer", hung)
    cfg = NodeConfig(preflight_timeout_s=1.0, preflight_cache_path=str(tmp_path / "c.json"))
    runner = Preflights("n1", cfg, policy(board))
    t0 = time.monotonic()
    result = await runner.run("j1", spec(board))
    release.set()
    assert result["check"] == "timeout" and "torch-free checks" in result["reason"], result
    assert time.monotonic() - t0 < 3 and runner.running == {} and runner.checkers == 0
