"""The coordinator's picture of the cluster, built only from what nodes publish, and the
failure detector: a node is dead on its offline status (last will or shutdown) or after
``missed`` telemetry intervals without a word, whichever first. Time is passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepedge.broker_schemas import AppLatency, Heartbeat, LatencyReport, NodeBirth, NodeDeath, Telemetry

__all__ = ["ClusterView", "NodeState"]


@dataclass
class NodeState:
    node: str
    birth: NodeBirth
    alive: bool = True
    last_seen: float = 0.0  # monotonic time of the last message from it
    telemetry: Telemetry | None = None
    latency: dict[str, AppLatency] = field(default_factory=dict)
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)  # job -> latest
    death_reason: str = ""
    silent: bool = False  # dead only because nothing was heard for a while: it may speak again
    profiling: bool = False  # its last LC report's window overlapped its own profiling

    @property
    def session(self) -> str:
        return self.birth.session

    @property
    def drained(self) -> bool:
        return self.birth.drained


MAX_APPS = 64  # LC apps kept per node (the least recently reported go first)


class ClusterView:
    def __init__(self, interval_s: float = 1.0, missed: int = 3, max_nodes: int = 10_000) -> None:
        self.interval_s = interval_s
        self.missed = missed
        self.max_nodes = max_nodes
        self.nodes: dict[str, NodeState] = {}
        self.revived: list[str] = []  # nodes heard from again after they were declared dead by silence

    def on_birth(self, birth: NodeBirth, now: float) -> str:
        """'joined' (new node or new session: a new member), 'updated' (same session), or ''
        (refused: the view holds ``max_nodes`` live nodes; a dead one makes room)."""
        state = self.nodes.get(birth.node)
        if state is None and len(self.nodes) >= self.max_nodes:
            dead = [s for s in self.nodes.values() if not s.alive]
            if not dead:
                return ""
            del self.nodes[min(dead, key=lambda s: s.last_seen).node]
        if state is None or state.session != birth.session or not state.alive:
            self.nodes[birth.node] = NodeState(birth.node, birth, True, now)
            return "joined"
        state.birth = birth
        state.last_seen = now
        return "updated"

    def on_death(self, death: NodeDeath, now: float) -> bool:
        """True if this marks a live member dead (a stale will of an old session is ignored)."""
        state = self.nodes.get(death.node)
        if state is None or state.session != death.session:
            return False
        if not state.alive:  # already dead by silence; now its connection is known to be gone
            state.silent = False
            return False
        state.alive = False
        state.death_reason = "shut down" if death.reason == "shutdown" else "connection lost (last will)"
        return True

    def touch(self, node: str, now: float) -> None:
        """A sign of life from ``node`` and nothing else."""
        self._touch(node, now)

    def _touch(self, node: str, now: float) -> NodeState | None:
        state = self.nodes.get(node)
        if state is None:
            return None  # no birth yet: not a member; it must say hello first
        if not state.alive:
            if not state.silent:
                return None  # its will or its goodbye: it says hello (a birth) when it is back
            # declared dead because nothing was heard (a stall here, a flood, a partition that
            # healed): its own topic speaks again, under the birth it has
            state.alive, state.silent, state.death_reason = True, False, ""
            self.revived.append(node)
        state.last_seen = max(state.last_seen, now)
        return state

    def on_telemetry(self, t: Telemetry, now: float) -> None:
        if (state := self._touch(t.node, now)) is not None:
            state.telemetry = t

    def on_latency(self, report: LatencyReport, now: float) -> list[AppLatency]:
        """Store the report; return the apps over their deadline."""
        state = self._touch(report.node, now)
        if state is None:
            return []
        state.profiling = report.profiling
        over = []
        for app in report.apps:
            state.latency.pop(app.app, None)
            state.latency[app.app] = app  # most recent last
            while len(state.latency) > MAX_APPS:
                del state.latency[next(iter(state.latency))]
            if app.deadline_ms is not None and app.count > 0 and app.p95_ms > app.deadline_ms:
                over.append(app)
        return over

    def on_heartbeat(self, hb: Heartbeat, now: float) -> None:
        if (state := self._touch(hb.node, now)) is not None:
            state.heartbeats[hb.job] = hb

    def check(self, now: float) -> list[str]:
        """Nodes that just missed ``missed`` intervals; they are marked dead."""
        limit = self.missed * self.interval_s
        dead = []
        for state in self.nodes.values():
            if state.alive and now - state.last_seen > limit:
                state.alive = False
                state.death_reason = f"silent for {now - state.last_seen:.1f} s ({self.missed} missed intervals)"
                state.silent = True
                dead.append(state.node)
        return dead

    def alive(self) -> list[NodeState]:
        return [s for s in self.nodes.values() if s.alive]
