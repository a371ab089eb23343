"""The decoded-dataset cache (``training.data_cache_dir``): a folder decoded once loads from the
cache, any change to its images decodes it again, and nothing in the cache folder is trusted
that another user could have written or that does not match the folder's listing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deepedge.config import TrainingConfig
from deepedge.demo._data import make_image_folder
from deepedge.training import _data_cache as data_cache
from deepedge.training._data import load_dataset
from deepedge.training._data_cache import OVERHEAD, STALE_TMP_S, DataCache


@pytest.fixture(autouse=True)
def not_racy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The images are made just before they are decoded: no wait for the racy window."""
    monkeypatch.setattr(data_cache, "RACY_S", 0.0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_image_folder(tmp_path / "data", 60)
    return tmp_path / "data"


def _load(folder: Path, cache: DataCache) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    paced = []
    ds = load_dataset(str(folder), pace=lambda: paced.append(1), cache=cache)
    return ds.x, ds.y, ds.origin, len(paced)


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("ds-*.pt"))


def test_a_folder_decoded_once_loads_from_the_cache_unchanged_without_decoding(folder: Path, tmp_path: Path) -> None:
    cache = DataCache(str(tmp_path / "cache"), 64)
    x1, y1, origin1, paced1 = _load(folder, cache)
    assert "decoded" in origin1 and "kept in the decoded cache" in origin1 and paced1 == 60
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    [entry] = _entries(tmp_path / "cache")
    assert entry.stat().st_mode & 0o777 == 0o600
    x2, y2, origin2, paced2 = _load(folder, cache)
    assert "from the decoded cache" in origin2 and paced2 == 0  # nothing decoded, nothing paced
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_a_touched_added_or_removed_image_decodes_the_folder_again(folder: Path, tmp_path: Path) -> None:
    cache = DataCache(str(tmp_path / "cache"), 64)
    _load(folder, cache)
    image = sorted((folder / sorted(os.listdir(folder))[0]).iterdir())[0]
    os.utime(image, (1_000_000, 1_000_000))  # same bytes, another mtime: another key
    _, _, origin, paced = _load(folder, cache)
    assert "decoded" in origin and paced == 60
    image.unlink()
    x, _, origin, paced = _load(folder, cache)
    assert "decoded" in origin and paced == 59 and len(x) == 59
    assert len(_entries(tmp_path / "cache")) == 3  # one per version of the folder


@pytest.mark.parametrize(
    "tamper",
    [
        "labels out of range",
        "fewer images",
        "other classes",
        "code in the file",
        "garbage",
        "group-writable",
        "symlink",
    ],
)
def test_a_cache_entry_that_does_not_match_or_is_not_safely_ours_is_ignored(
    folder: Path, tmp_path: Path, tamper: str
) -> None:
    cache = DataCache(str(tmp_path / "cache"), 64)
    x, y, _, _ = _load(folder, cache)
    [entry] = _entries(tmp_path / "cache")
    classes = sorted(p.name for p in folder.iterdir())
    ran = tmp_path / "ran"
    match tamper:
        case "labels out of range":
            torch.save({"x": x, "y": y + 100, "classes": classes}, entry)
        case "fewer images":
            torch.save({"x": x[:10], "y": y[:10], "classes": classes}, entry)
        case "other classes":
            torch.save({"x": x, "y": y, "classes": [c + "x" for c in classes]}, entry)
        case "code in the file":  # a pickle that would run code if loaded without weights_only

            class Evil:
                def __reduce__(self) -> tuple[object, tuple[str]]:
                    return (os.system, (f"touch {ran}",))

            torch.save({"x": x, "y": y, "classes": classes, "evil": Evil()}, entry)
        case "garbage":
            entry.write_bytes(b"not a tensor file")
        case "group-writable":
            entry.chmod(0o666)
        case "symlink":
            real = tmp_path / "elsewhere.pt"
            entry.rename(real)
            entry.symlink_to(real)
    _, _, origin, paced = _load(folder, cache)
    assert "decoded" in origin and paced == 60, origin
    assert not ran.exists()
    if tamper not in ("group-writable", "symlink"):  # written anew over the bad entry
        x2, _, origin, _ = _load(folder, cache)
        assert "from the decoded cache" in origin and torch.equal(x, x2)


def test_a_cache_folder_others_may_write_is_not_used(folder: Path, tmp_path: Path) -> None:
    shared = tmp_path / "cache"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cache = DataCache(str(shared), 64)
    _, _, origin, _ = _load(folder, cache)
    assert "not cached" in origin and "no one else may write" in origin
    assert not _entries(shared)


def test_the_cache_keeps_within_its_size_removing_the_least_recently_used(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        make_image_folder(tmp_path / name, 60)
    one = 60 * 3 * 32 * 32 + 60 * 8 + OVERHEAD  # bytes of one decoded folder, as the budget counts it
    cache = DataCache(str(tmp_path / "cache"), 1)
    cache.max_bytes = 2 * one + 1000  # two folders fit, not three
    _load(tmp_path / "a", cache)
    _load(tmp_path / "b", cache)
    [first, _] = sorted(_entries(tmp_path / "cache"), key=lambda p: p.stat().st_mtime)
    os.utime(first, (1, 1))
    _, _, origin, _ = _load(tmp_path / "a", cache)  # a used again: b is now the oldest
    assert "from the decoded cache" in origin
    _load(tmp_path / "c", cache)
    assert len(_entries(tmp_path / "cache")) == 2
    assert "from the decoded cache" in _load(tmp_path / "a", cache)[2]
    assert "decoded in" in _load(tmp_path / "b", cache)[2]
    too_small = DataCache(str(tmp_path / "small"), 1)
    too_small.max_bytes = one // 2
    assert "more than training.data_cache_mb: not cached" in _load(tmp_path / "a", too_small)[2]


def test_the_cache_is_off_when_empty_or_zero_and_its_folder_must_be_absolute(folder: Path, tmp_path: Path) -> None:
    for cache in (DataCache("", 64), DataCache(str(tmp_path / "cache"), 0)):
        _, _, origin, paced = _load(folder, cache)
        assert "not cached (off)" in origin and paced == 60
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="data_cache_dir must be an absolute path"):
        TrainingConfig(data_cache_dir="cache")
    _, _, origin, _ = _load(folder, DataCache(str(tmp_path / "no" / "parent"), 64))
    assert "not cached" in origin and "No such file" in origin


def test_a_folder_changed_just_before_it_was_listed_is_decoded_but_not_cached(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_cache, "RACY_S", 3600.0)  # every image is "recent"
    cache = DataCache(str(tmp_path / "cache"), 64)
    _, _, origin, _ = _load(folder, cache)
    assert "not cached (an image changed less than" in origin
    assert not _entries(tmp_path / "cache")


def test_an_image_replaced_while_the_folder_is_decoded_is_not_cached(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class folder swapped for another with the same names while the decoder works: swapped
    back later, the folder would look as listed, but what was decoded was not it."""
    cls = sorted(p for p in folder.iterdir())[1]
    make_image_folder(tmp_path / "other", 60)
    poisoned = sorted(p for p in (tmp_path / "other").iterdir())[0]
    for a, b in zip(sorted(poisoned.iterdir()), sorted(cls.iterdir()), strict=False):
        a.rename(poisoned / b.name)
    swaps = []

    def pace() -> None:
        if not swaps:  # after the first image: the class folder swapped
            cls.rename(tmp_path / "away")
            poisoned.rename(cls)
            swaps.append(1)

    cache = DataCache(str(tmp_path / "cache"), 64)
    ds = load_dataset(str(folder), pace=pace, cache=cache)
    assert "not cached (an image was replaced while the folder was decoded)" in ds.origin
    assert not _entries(tmp_path / "cache")


def test_temporary_files_of_killed_writers_are_removed_once_stale(folder: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    stale, fresh = cache_dir / ".ds-aa.pt.111.tmp", cache_dir / ".ds-bb.pt.222.tmp"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"x" * 1000)
    os.utime(stale, (0, os.stat(stale).st_mtime - STALE_TMP_S - 10))
    _load(folder, DataCache(str(cache_dir), 64))
    assert not stale.exists() and fresh.exists() and len(_entries(cache_dir)) == 1
