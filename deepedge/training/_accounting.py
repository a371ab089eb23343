"""Which samples every completed step trained on, and on which node, so a job can prove that
every sample of every epoch was trained on exactly once, failures included.

Every rank records the whole step (every node's slice of the batch) once its all-reduce has
succeeded: a step is then on record even if one rank dies right after it. A step redone under a
later plan generation (its all-reduce failed somewhere) is recorded again; the record of the
highest generation is the one that counts, because that is the update the survivors kept.

Each record also carries this rank's timing of the step — seconds computing its slice
(``busy``), seconds in the all-reduce, waits for slower peers included (``reduce``), and when
the step was done (``t``, wall clock) — so a run can tell where its time went
(:func:`deepedge.training.step_timing`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from deepedge.training._files import append_text, ensure_dir, os_error

__all__ = ["AccountingLog", "read_records", "verify_accounting"]


class AccountingLog:
    def __init__(self, output: Path, node: str) -> None:
        self.dir = output / "accounting"
        ensure_dir(self.dir)
        self._fh = append_text(self.dir / f"{node}.jsonl")

    def record(
        self,
        generation: int,
        step: int,
        epoch: int,
        by_node: dict[str, list[int]],
        busy_s: float = 0.0,
        reduce_s: float = 0.0,
    ) -> None:
        row = {
            "gen": generation,
            "step": step,
            "epoch": epoch,
            "by": by_node,
            "busy": round(busy_s, 6),
            "reduce": round(reduce_s, 6),
            "t": round(time.time(), 6),
        }
        try:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        except OSError as exc:  # e.g. a full disk: the job fails with it, not as a lost peer
            raise os_error("accounting", self.dir, exc) from None

    def close(self) -> None:
        self._fh.close()


def read_records(output: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every rank's records, by node, in the order written."""
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted((Path(output) / "accounting").glob("*.jsonl"))
    }


def verify_accounting(output: str | Path, dataset_size: int, epochs: int) -> dict[str, object]:
    """{"ok", "missing", "duplicated", "samples"}: ok when every (epoch, sample) appears once."""
    steps: dict[int, dict[str, object]] = {}
    for rows in read_records(output).values():
        for row in rows:
            kept = steps.get(row["step"])
            if kept is None or row["gen"] > kept["gen"]:
                steps[row["step"]] = row
    seen: Counter[tuple[int, int]] = Counter()
    for row in steps.values():
        for samples in row["by"].values():  # type: ignore[attr-defined]
            seen.update((int(row["epoch"]), s) for s in samples)  # type: ignore[call-overload]
    expected = {(e, s) for e in range(epochs) for s in range(dataset_size)}
    missing = len(expected - set(seen))
    duplicated = sum(1 for c in seen.values() if c > 1)
    return {
        "ok": missing == 0 and duplicated == 0 and set(seen) <= expected,
        "missing": missing,
        "duplicated": duplicated,
        "samples": sum(seen.values()),
    }
