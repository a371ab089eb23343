"""The knowledge base (FECBench's): SQLite, keyed by device model, LC app and software
versions; it holds each profile's design, its raw runs and the fitted model (its kind, its
cross-validated figures and the compiled cap table). Every board of the same device model
reuses it; ``deepedge profile list|show|export|import`` manage it; the coordinator reads it when
it plans. Export files are JSON (nothing is pickled)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepedge.errors import DeepEdgeError, ExitCode
from deepedge.profiling._space import Run
from deepedge.profiling._table import CapTable

__all__ = [
    "EXPORT_FORMAT",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "ProfileKey",
    "ProfileSummary",
    "TableCache",
    "versions_key",
]

EXPORT_FORMAT = "deepedge-knowledge-base/1"
VERSIONED = ("deepedge", "python", "torch")  # the software an LC app's latency profile depends on

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY,
    device_model TEXT NOT NULL,
    app TEXT NOT NULL,
    versions TEXT NOT NULL,
    training_model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    space TEXT NOT NULL DEFAULT '{}',
    design TEXT NOT NULL DEFAULT '[]',
    UNIQUE (device_model, app, versions)
);
CREATE TABLE IF NOT EXISTS runs (
    profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (profile_id, seq)
);
CREATE TABLE IF NOT EXISTS models (
    profile_id INTEGER PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    q REAL NOT NULL,
    cv TEXT NOT NULL,
    candidates TEXT NOT NULL,
    cap_table TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def knowledge_base_path(db: str) -> str:
    """The knowledge base the coordinator plans with: ``knowledge.db`` beside its job store
    (``deepedge profile import --kb`` puts profiles there)."""
    return str(Path(db).with_name("knowledge.db"))


def versions_key(software: Mapping[str, str]) -> str:
    """``deepedge=0.1.0,python=3.11.7,torch=2.13.0`` from a birth's ``software``."""
    return ",".join(f"{k}={software[k]}" for k in VERSIONED if k in software)


@dataclass(frozen=True)
class ProfileKey:
    device_model: str
    app: str
    versions: str

    def __str__(self) -> str:
        return f"{self.device_model} / {self.app} / {self.versions or '-'}"


@dataclass(frozen=True)
class ProfileSummary:
    id: int
    key: ProfileKey
    training_model: str
    runs: int
    kind: str | None
    median_ape: float | None
    coverage: float | None
    updated: float
    source: str


_TABLES = frozenset({"profiles", "runs", "models"})
_SQLITE_READONLY_ROLLBACK = 776  # a hot journal a read-only connection cannot roll back


class KnowledgeBaseError(DeepEdgeError):
    """A file that is not a knowledge base deepedge can use (or cannot be written)."""

    exit_code = ExitCode.CONFIG


class KnowledgeBase:
    def __init__(self, path: str | Path, create: bool = True) -> None:
        """Open the knowledge base at ``path``; ``create``: make it (and its tables) if missing,
        else only read it (``profile list | show | export``: opened read-only, so a wrong
        ``--kb`` never changes another program's file). Raises KnowledgeBaseError for a path
        that is not one: a folder, a file that is not SQLite, or an SQLite database with tables
        of its own (the coordinator's job store named by mistake is never written to)."""
        self.path = Path(path)
        self.readonly = not create
        if self.path.is_dir():
            raise KnowledgeBaseError(f"{self.path} is a folder, not a knowledge base (--kb names its file)")
        if not create and not self.path.is_file():
            raise KnowledgeBaseError(f"no knowledge base at {self.path} (--kb)")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tables = self._tables_in()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != _SQLITE_READONLY_ROLLBACK:
                    raise
                # a writer died mid-transaction: its journal is rolled back by a writable
                # connection (a read-only one cannot); the file is checked as ever after it
                self.readonly = False
                tables = self._tables_in()
                self.readonly = not create
            with self._db() as db:
                foreign = {t for t in tables - _TABLES if not t.startswith("sqlite_")}
                if foreign or (not create and not tables >= _TABLES):
                    what = f"its tables: {', '.join(sorted(tables))}" if tables else "no tables"
                    raise KnowledgeBaseError(f"{self.path} is an SQLite database but not a knowledge base ({what})")
                if create:
                    db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # not a database, unreadable, ...
            raise KnowledgeBaseError(f"{self.path} is not a knowledge base: {exc}") from None
        except OSError as exc:
            raise KnowledgeBaseError(f"{self.path}: {exc.strerror or exc}") from None

    def _tables_in(self) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        else:
            db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            with db:
                yield db
        finally:
            db.close()

    # ---- writing ------------------------------------------------------------------------------

    def profile_id(self, key: ProfileKey, training_model: str = "", source: str = "", space: Any = None) -> int:
        """The id of ``key``'s profile, created if new."""
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "SELECT id FROM profiles WHERE device_model=? AND app=? AND versions=?",
                (key.device_model, key.app, key.versions),
            ).fetchone()
            if row is not None:
                db.execute("UPDATE profiles SET updated=? WHERE id=?", (now, row[0]))
                return int(row[0])
            cur = db.execute(
                "INSERT INTO profiles (device_model, app, versions, training_model, created, updated, source, space)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.device_model, key.app, key.versions, training_model, now, now, source, json.dumps(space or {})),
            )
            return int(cur.lastrowid or 0)

    def set_design(self, pid: int, design: list[dict[str, Any]]) -> None:
        with self._db() as db:
            db.execute("UPDATE profiles SET design=?, updated=? WHERE id=?", (json.dumps(design), time.time(), pid))

    def add_runs(self, pid: int, runs: list[Run]) -> None:
        with self._db() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(seq), -1) FROM runs WHERE profile_id=?", (pid,)).fetchone()
            db.executemany(
                "INSERT INTO runs (profile_id, seq, phase, data) VALUES (?, ?, ?, ?)",
                [(pid, last + 1 + k, r.phase, json.dumps(r.to_dict())) for k, r in enumerate(runs)],
            )
            db.execute("UPDATE profiles SET updated=? WHERE id=?", (time.time(), pid))

    def set_model(
        self,
        pid: int,
        kind: str,
        q: float,
        cv: dict[str, Any],
        candidates: list[dict[str, Any]],
        table: CapTable,
        created: float | None = None,
    ) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO models (profile_id, kind, q, cv, candidates, cap_table, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    pid,
                    kind,
                    q,
                    json.dumps(cv),
                    json.dumps(candidates),
                    json.dumps(table.to_dict()),
                    time.time() if created is None else created,
                ),
            )

    def delete(self, pid: int) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM profiles WHERE id=?", (pid,)).rowcount > 0

    # ---- reading ------------------------------------------------------------------------------

    def runs(self, pid: int, phase: str | None = None) -> list[Run]:
        with self._db() as db:
            rows = db.execute(
                "SELECT data FROM runs WHERE profile_id=? AND (? IS NULL OR phase=?) ORDER BY seq", (pid, phase, phase)
            ).fetchall()
        return [Run.from_dict(json.loads(d)) for (d,) in rows]

    def profiles(self) -> list[ProfileSummary]:
        with self._db() as db:
            rows = db.execute(
                "SELECT p.id, p.device_model, p.app, p.versions, p.training_model, p.updated, p.source,"
                " (SELECT COUNT(*) FROM runs r WHERE r.profile_id = p.id), m.kind, m.cv"
                " FROM profiles p LEFT JOIN models m ON m.profile_id = p.id ORDER BY p.id"
            ).fetchall()
        out = []
        for pid, dm, app, ver, tm, updated, source, n, kind, cv in rows:
            figures = json.loads(cv) if cv else {}
            out.append(
                ProfileSummary(
                    pid,
                    ProfileKey(dm, app, ver),
                    tm,
                    n,
                    kind,
                    figures.get("median_ape"),
                    figures.get("coverage"),
                    updated,
                    source,
                )
            )
        return out

    def show(self, pid: int) -> dict[str, Any] | None:
        """Everything about one profile: key, space, design, runs, model."""
        with self._db() as db:
            row = db.execute(
                "SELECT device_model, app, versions, training_model, created, updated, source, space, design"
                " FROM profiles WHERE id=?",
                (pid,),
            ).fetchone()
            model = db.execute(
                "SELECT kind, q, cv, candidates, cap_table, created FROM models WHERE profile_id=?", (pid,)
            ).fetchone()
        if row is None:
            return None
        dm, app, ver, tm, created, updated, source, space, design = row
        out: dict[str, Any] = {
            "id": pid,
            "device_model": dm,
            "app": app,
            "versions": ver,
            "training_model": tm,
            "created": created,
            "updated": updated,
            "source": source,
            "space": json.loads(space),
            "design": json.loads(design),
            "runs": [r.to_dict() for r in self.runs(pid)],
            "model": None,
        }
        if model is not None:
            kind, q, cv, candidates, table, mcreated = model
            out["model"] = {
                "kind": kind,
                "q": q,
                "cv": json.loads(cv),
                "candidates": json.loads(candidates),
                "cap_table": json.loads(table),
                "created": mcreated,
            }
        return out

    def table(self, device_model: str, app: str, versions: str) -> tuple[CapTable, ProfileKey] | None:
        """The cap table for a board of ``device_model`` running ``app``: the profile with these
        exact software versions if there is one, else the newest of that device model and app
        (the key says which was used)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT p.versions, m.cap_table FROM profiles p JOIN models m ON m.profile_id = p.id"
                " WHERE p.device_model=? AND p.app=? ORDER BY (p.versions = ?) DESC, p.updated DESC LIMIT 1",
                (device_model, app, versions),
            ).fetchall()
        if not rows:
            return None
        ver, table = rows[0]
        return CapTable.from_dict(json.loads(table)), ProfileKey(device_model, app, ver)

    def mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    # ---- moving between machines ----------------------------------------------------------------

    def export(self, ids: list[int] | None = None) -> dict[str, Any]:
        chosen = [s.id for s in self.profiles()] if ids is None else ids
        profiles = [p for p in (self.show(i) for i in chosen) if p is not None]
        return {"format": EXPORT_FORMAT, "exported": time.time(), "profiles": profiles}

    def import_(self, doc: dict[str, Any]) -> list[int]:
        """Add every profile of an export (replacing a profile with the same key). Raises
        ValueError on a document that is not an export."""
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a deepedge knowledge-base export (format {EXPORT_FORMAT!r} expected)")
        profiles = doc.get("profiles", [])
        if not isinstance(profiles, list) or len(profiles) > MAX_IMPORT_PROFILES:
            raise ValueError(f"an export holds a list of at most {MAX_IMPORT_PROFILES} profiles")
        parsed = [_parse_profile(p) for p in profiles]  # all checked before anything is replaced
        ids = []
        for key, p, runs, model, table in parsed:
            for i in [s.id for s in self.profiles() if s.key == key]:
                self.delete(i)
            pid = self.profile_id(key, str(p.get("training_model", "")), str(p.get("source", "")), p.get("space"))
            self.set_design(pid, list(p.get("design", [])))
            self.add_runs(pid, runs)
            if model is not None and table is not None:
                cv, candidates = dict(model["cv"]), list(model["candidates"])
                self.set_model(pid, model["kind"], model["q"], cv, candidates, table, model["created"])
            ids.append(pid)
        return ids


MAX_IMPORT_PROFILES = 1000
MAX_CACHED_TABLES = 256  # (device model, app, versions) keys the coordinator keeps looked up
MAX_IMPORT_RUNS = 10_000  # runs of one imported profile (a session has a few dozen)


def _parse_profile(
    p: Any,
) -> tuple[ProfileKey, dict[str, Any], list[Run], dict[str, Any] | None, CapTable | None]:
    """One profile of an export, checked (ValueError): its key, runs, model and cap table."""
    try:
        if not isinstance(p, dict):
            raise ValueError("a profile is not an object")
        key = ProfileKey(str(p["device_model"])[:200], str(p["app"])[:200], str(p["versions"])[:2000])
        raw_runs = p.get("runs", [])
        design = p.get("design", [])
        if not isinstance(raw_runs, list) or len(raw_runs) > MAX_IMPORT_RUNS:
            raise ValueError(f"runs must be a list of at most {MAX_IMPORT_RUNS}")
        if not isinstance(design, list) or len(design) > MAX_IMPORT_RUNS:
            raise ValueError(f"design must be a list of at most {MAX_IMPORT_RUNS} points")
        runs = [Run.from_dict(r) for r in raw_runs]
        model = p.get("model")
        table = None
        if model is not None:
            if not (
                isinstance(model, dict)
                and isinstance(model.get("cv"), dict)
                and isinstance(model.get("candidates"), list)
            ):
                raise ValueError("its model needs cv (an object) and candidates (a list)")
            if len(model["cv"]) > 64 or len(model["candidates"]) > 64:
                raise ValueError("its model lists more than 64 candidates")
            q = float(model["q"])
            if not 0 < q < 1:
                raise ValueError(f"quantile {q} is not in (0, 1)")
            created = float(model.get("created", time.time()))
            if not 0 <= created < 1e11:  # (NaN, which json reads, included)
                raise ValueError(f"created {created} is not a time")
            # every value the import writes, as it writes it: nothing fails after a profile is replaced
            model = model | {"kind": str(model["kind"]), "q": q, "created": created}
            table = CapTable.from_dict(model["cap_table"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a profile of the export is not valid: {type(exc).__name__}: {exc}") from None
    return key, p, runs, model, table


class TableCache:
    """The coordinator's view of a knowledge base: cap tables by (device model, app, versions),
    read again only when the file changed (checked at most every ``check_s``). A missing or
    unreadable file means no tables (the coordinator plans with its linear models)."""

    def __init__(self, path: str | Path, check_s: float = 5.0) -> None:
        self.path = Path(path)
        self.check_s = check_s
        self._checked = -1e9
        self._mtime = -1.0
        self._tables: dict[tuple[str, str, str], tuple[CapTable, ProfileKey] | None] = {}
        self.error = ""

    def get(
        self, device_model: str, app: str, versions: str, now: float | None = None
    ) -> tuple[CapTable, ProfileKey] | None:
        now = time.monotonic() if now is None else now
        if now - self._checked >= self.check_s:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                mtime = -1.0
            if mtime != self._mtime:
                self._mtime = mtime
                self._tables.clear()
        key = (device_model, app, versions)
        if key not in self._tables:
            if self._mtime < 0:
                return None
            try:
                self._tables[key] = KnowledgeBase(self.path, create=False).table(device_model, app, versions)
                self.error = ""
            except (KnowledgeBaseError, sqlite3.Error, OSError, ValueError, KeyError, TypeError) as exc:
                self.error = f"{self.path}: {exc}"
                self._tables[key] = None
            # bounded: the key's device model and versions are what a node's birth says
            while len(self._tables) > MAX_CACHED_TABLES:
                del self._tables[next(iter(self._tables))]
        return self._tables[key]
