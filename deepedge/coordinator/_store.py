"""SQLite persistence of jobs, so a restarted coordinator resumes them. Synchronous; the
service calls it off the event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from deepedge.coordinator._jobs import JobRecord
from deepedge.errors import DeepEdgeError

__all__ = ["SAVED", "JobStore", "StoreError"]

SAVED = "meta:saved"  # the memory row whose time is the last save's

_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(JobRecord)


class StoreError(DeepEdgeError):
    pass


class JobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "record TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)"
            )
            # what the coordinator learned, a row per node and per job (deepedge.coordinator._memory)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS memory (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"job store {self.path}: {exc}") from None

    def save(self, record: JobRecord) -> None:
        self._db.execute(
            "INSERT INTO jobs (job, state, record, created, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(job) DO UPDATE SET state=excluded.state, record=excluded.record, updated=excluded.updated",
            (record.job, record.state.value, _ENC.encode(record).decode(), record.created, record.updated),
        )

    def load_all(self) -> tuple[list[JobRecord], list[tuple[str, str]]]:
        """Every readable job, and (job id, why) of every row that is not (a row from an
        incompatible build, or damaged): those are skipped, not fatal."""
        rows = self._db.execute("SELECT job, record FROM jobs ORDER BY created").fetchall()
        out, skipped = [], []
        for job, text in rows:
            try:
                out.append(_DEC.decode(text))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                skipped.append((str(job)[:64], str(exc)[:300]))
        return out, skipped

    def state_of(self, job: str) -> str | None:
        row = self._db.execute("SELECT state FROM jobs WHERE job = ?", (job,)).fetchone()
        return str(row[0]) if row else None

    def finished_before(self, cutoff: float) -> list[str]:
        """Jobs in a terminal state last updated before ``cutoff`` (wall clock)."""
        rows = self._db.execute(
            "SELECT job FROM jobs WHERE state IN ('completed', 'failed', 'cancelled') AND updated <= ? "
            "ORDER BY updated",
            (cutoff,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def delete(self, job: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE job = ?", (job,))

    def exists(self, job: str) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE job = ?", (job,)).fetchone() is not None

    def remember(self, rows: dict[str, str], forget: list[str], now: float) -> None:
        """Write the memory rows that changed (key -> JSON), delete ``forget``, and mark the time
        of this save (``_memory.SAVED``), in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO memory (key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                [(k, v, now) for k, v in {**rows, SAVED: "{}"}.items()],
            )
            self._db.executemany("DELETE FROM memory WHERE key = ?", [(k,) for k in forget])

    def forget_memory(self) -> int:
        """Delete every memory row (what a coordinator learned of the boards); how many there were."""
        with self._db:
            return self._db.execute("DELETE FROM memory").rowcount

    def recall(self, since: float) -> list[tuple[str, str]]:
        """(key, JSON) of every memory row, newest first, when the last save was at or after
        ``since`` (wall clock); else none, and the table is emptied (what a coordinator stopped
        that long ago learned is stale)."""
        saved = self._db.execute("SELECT updated FROM memory WHERE key = ?", (SAVED,)).fetchone()
        if saved is None or saved[0] < since:
            self._db.execute("DELETE FROM memory")
            return []
        rows = self._db.execute("SELECT key, value FROM memory WHERE key != ? ORDER BY updated DESC", (SAVED,))
        return [(str(k), str(v)) for k, v in rows.fetchall()]

    def close(self) -> None:
        self._db.close()
