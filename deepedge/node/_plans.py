"""Which plans a node acts on (Sparkplug binds a death to its birth with bdSeq; deepedge binds a
plan to the coordinator session that made it).

- Only plans of the coordinator session that is online now: its retained ``coordinator/status``
  names the session, every plan carries the session that made it. A plan of another session —
  an old retained one, a replay, one that arrives before the status — is held (the newest per
  job) until that session is online, and otherwise never acted on.
- Generations only move forward, also after the job's worker has finished: the highest
  generation acted on is remembered per job (bounded, least recently used forgotten first), so a
  replayed older plan never restarts a finished job.
- The same generation again (a restarted coordinator republishes its unfinished jobs' plans
  under its new session) is adopted without telling the worker: nothing re-forms.

While the coordinator is offline nothing new is acted on, and running workers keep training.
"""

from __future__ import annotations

from collections import OrderedDict

from deepedge.broker_schemas import CoordinatorStatus, Plan

__all__ = ["PlanGate"]


class PlanGate:
    def __init__(self, max_jobs: int = 1024) -> None:
        self.session = ""  # the coordinator session last seen online
        self.online = False
        self._max_jobs = max_jobs
        self._seen: OrderedDict[str, int] = OrderedDict()  # job -> highest generation acted on
        self._held: OrderedDict[str, Plan] = OrderedDict()  # job -> newest plan of another session

    def highest(self, job: str) -> int:
        return self._seen.get(job, -1)

    def on_coordinator(self, status: CoordinatorStatus) -> list[Plan]:
        """Track the coordinator; the held plans that its coming online makes current."""
        self.online = status.state == "online"
        if not self.online:
            return []
        self.session = status.session
        ready = [p for p in self._held.values() if p.session == self.session]
        for plan in ready:
            del self._held[plan.job]
        return [p for p in (self.offer(plan) for plan in ready) if p is not None]

    def offer(self, plan: Plan) -> Plan | None:
        """The plan if the node should act on it now, else None (held or dropped)."""
        if not self.online or plan.session != self.session:
            held = self._held.get(plan.job)
            if held is None or plan.generation >= held.generation:
                self._held[plan.job] = plan
                self._held.move_to_end(plan.job)
                while len(self._held) > self._max_jobs:
                    self._held.popitem(last=False)
            return None
        if plan.generation <= self.highest(plan.job):
            return None  # stale, or the same generation again (adopted as it is)
        self._seen[plan.job] = plan.generation
        self._seen.move_to_end(plan.job)
        while len(self._seen) > self._max_jobs:
            self._seen.popitem(last=False)
        return plan

    def why_held(self, plan: Plan) -> str:
        if not self.online:
            return "no coordinator online"
        return f"plan of coordinator session {plan.session or '(none)'}, the online one is {self.session}"
