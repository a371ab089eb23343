"""Which samples every completed step trained on, per node, so a job can prove that every sample
of every epoch was trained on exactly once, failures included."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

__all__ = ["AccountingLog", "verify_accounting"]


class AccountingLog:
    def __init__(self, output: Path, node: str) -> None:
        self.dir = output / "accounting"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = (self.dir / f"{node}.jsonl").open("a")

    def record(self, generation: int, step: int, epoch: int, samples: list[int]) -> None:
        self._fh.write(json.dumps({"gen": generation, "step": step, "epoch": epoch, "samples": samples}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def verify_accounting(output: str | Path, dataset_size: int, epochs: int) -> dict[str, object]:
    """{"ok", "missing", "duplicated", "samples"}: ok when every (epoch, sample) appears once."""
    seen: Counter[tuple[int, int]] = Counter()
    for path in sorted((Path(output) / "accounting").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            seen.update((row["epoch"], s) for s in row["samples"])
    expected = {(e, s) for e in range(epochs) for s in range(dataset_size)}
    missing = len(expected - set(seen))
    duplicated = sum(1 for k, c in seen.items() if c > 1)
    return {
        "ok": missing == 0 and duplicated == 0 and set(seen) <= expected,
        "missing": missing,
        "duplicated": duplicated,
        "samples": sum(seen.values()),
    }
