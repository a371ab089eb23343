"""What a run of emulated boards created, written down before it is created
(``/run/deepedge-netem/<tag>.json``), so that whatever a run leaves behind — it was killed, the
machine lost power mid-teardown — the next run removes: namespaces (and the processes still in
them), veth links, the bridge, cgroups (and their processes)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from deepedge.netem._cgroups import kill_and_remove
from deepedge.netem._cmd import ip

__all__ = ["STATE_DIR", "RunRecord", "cleanup_leftovers", "teardown"]

STATE_DIR = Path("/run/deepedge-netem")
TAG = re.compile(r"^[0-9a-f]{6}$")
NETNS = re.compile(r"^de([0-9a-f]{6})-")  # de<tag>-<board>
LINK = re.compile(r"^(?:debr|dv)([0-9a-f]{6})")  # debr<tag>, dv<tag><i>


@dataclass
class RunRecord:
    tag: str
    pid: int
    started: float  # the owner's start time (a reused pid is not the owner)
    bridge: str = ""
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # bridge-side veths
    cgroups: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def owner_alive(self) -> bool:
        try:
            return bool(abs(psutil.Process(self.pid).create_time() - self.started) < 1.0)
        except psutil.Error:
            return False


def _netns_pids(ns: str) -> set[int]:
    out = ip("netns", "pids", ns, check=False).stdout
    return {int(x) for x in out.split() if x.isdigit()}


def teardown(rec: RunRecord) -> list[str]:
    """Remove everything ``rec`` lists; what could not be removed, with why (else [])."""
    problems: list[str] = []
    for ns in rec.netns:
        for pid in _netns_pids(ns):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    problems += kill_and_remove([Path(p) for p in rec.cgroups if Path(p).exists()])
    existing = set(_links())
    for link in [*rec.links, rec.bridge]:
        if link and link in existing:
            r = ip("link", "del", link, check=False)
            if r.returncode != 0:
                problems.append(f"link {link}: {r.stderr.strip()}")
    namespaces = set(_namespaces())
    for ns in rec.netns:
        if ns in namespaces:
            r = ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                problems.append(f"netns {ns}: {r.stderr.strip()}")
    if not problems:
        rec.path.unlink(missing_ok=True)
    return problems


def _namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = ip("-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2]


def cleanup_leftovers(cgroup_parents: list[Path] | None = None) -> list[str]:
    """Tear down every earlier run whose owner is gone, and anything with our names that no
    live run claims (namespaces, links, and ``deepedge-<tag>`` cgroups under
    ``cgroup_parents``). Returns what was removed (one line each)."""
    done: list[str] = []
    live: set[str] = set()
    if STATE_DIR.is_dir():
        for path in sorted(STATE_DIR.glob("*.json")):
            rec = RunRecord.load(path)
            if rec is None:
                path.unlink(missing_ok=True)
                continue
            if rec.owner_alive():
                live.add(rec.tag)
                continue
            problems = teardown(rec)
            done.append(f"run {rec.tag} (pid {rec.pid}): " + ("; ".join(problems) if problems else "removed"))
    orphans = RunRecord(tag="orphans", pid=0, started=0.0)
    for ns in _namespaces():
        m = NETNS.match(ns)
        if m and m.group(1) not in live:
            orphans.netns.append(ns)
    for link in _links():
        m = LINK.match(link)
        if m and m.group(1) not in live:
            orphans.links.append(link)
    for parent in cgroup_parents or []:
        for d in parent.glob("deepedge-*") if parent.is_dir() else []:
            tag = d.name.removeprefix("deepedge-")
            if TAG.match(tag) and tag not in live and d.is_dir():
                orphans.cgroups.append(str(d))
    if orphans.netns or orphans.links or orphans.cgroups:
        problems = teardown(orphans)
        done.append(
            f"unclaimed {orphans.netns + orphans.links + orphans.cgroups}: " + ("; ".join(problems) or "removed")
        )
    return done
