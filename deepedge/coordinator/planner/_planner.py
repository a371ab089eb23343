"""The planner: which nodes train, each one's intensity cap and integer share of every global
batch, to minimise the predicted makespan (compute + all-reduce) while every LC app keeps its
deadline. A pure function of its inputs: no clock, no I/O. See docs/planner.md for the maths."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from deepedge.coordinator.planner._caps import node_cap
from deepedge.coordinator.planner._lp import ShareLp, padded_size
from deepedge.coordinator.planner._types import MIN_RATE, JobModel, NetworkModel, NodeModel, PlanDecision, PlannerConfig
from deepedge.coordinator.planner._waterfill import allreduce_s, waterfill_time

__all__ = ["Planner", "candidate_sizes", "integer_shares", "plan", "proportional_plan", "uniform_plan"]


def candidate_sizes(n: int) -> list[int]:
    """Participant counts to evaluate: every k up to 32, then a geometric grid, then n."""
    ks = set(range(1, min(n, 32) + 1))
    k = 32.0
    while k < n:
        k *= 1.15
        ks.add(min(n, int(k)))
    ks.add(n)
    return sorted(ks)


def integer_shares(
    real: Sequence[float], rho: Sequence[float], overhead: Sequence[float], ub: Sequence[int], batch: int
) -> list[int]:
    """Integer shares summing to ``batch`` with the least max_i b_i/rho_i + o_i: start from the
    floor of an optimal real solution (some integer optimum lies above it, by an exchange
    argument) and give each remaining sample to the node that would finish it first."""
    shares = [min(u, max(0, math.floor(b + 1e-9))) for b, u in zip(real, ub, strict=True)]
    heap = [((s + 1) / r + o, i) for i, (s, r, o, u) in enumerate(zip(shares, rho, overhead, ub, strict=True)) if s < u]
    heapq.heapify(heap)
    for _ in range(batch - sum(shares)):
        _, i = heapq.heappop(heap)
        shares[i] += 1
        if shares[i] < ub[i]:
            heapq.heappush(heap, ((shares[i] + 1) / rho[i] + overhead[i], i))
    return shares


class Planner:
    """Holds the compiled cvxpy problems (one per padded size); ``plan`` is otherwise pure."""

    def __init__(self, config: PlannerConfig | None = None) -> None:
        self.config = config or PlannerConfig()
        self._lps: dict[int, ShareLp] = {}

    def _lp(self, n: int) -> ShareLp:
        size = padded_size(n)
        if size not in self._lps:
            self._lps[size] = ShareLp(size, self.config.solver)
        return self._lps[size]

    def plan(self, nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel | None = None) -> PlanDecision:
        """The plan for ``job`` on ``nodes``; with ``config.allow_half``, float16 communication
        when it shortens the predicted step by ``half_gain`` or more (half the bytes may also
        change who takes part: both are planned, so allowing it doubles the planning time)."""
        full = self._plan(nodes, job, net or NetworkModel())
        cfg = self.config
        if not (cfg.allow_half and full.feasible and job.model_bytes > 0):
            return full
        half_job = replace(job, model_bytes=job.model_bytes // 2)
        half = self._plan(nodes, half_job, net or NetworkModel())
        if half.feasible and half.step_s <= (1 - cfg.half_gain) * full.step_s:
            return replace(half, grad_dtype="float16")
        return full

    def _plan(self, nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel) -> PlanDecision:
        cfg = self.config
        batch = job.global_batch
        caps: dict[str, float] = {}
        excluded: dict[str, str] = {}
        feasible: list[NodeModel] = []
        for node in sorted(nodes, key=lambda n: n.node):
            if node.unavailable:
                excluded[node.node] = node.unavailable
                caps[node.node] = 0.0
                continue
            cap, why = node_cap(node, cfg.margin)
            caps[node.node] = cap
            slow = not node.rate >= MIN_RATE  # (NaN included)
            if slow or node.max_share <= 0:
                excluded[node.node] = "no measured throughput" if slow else "no memory for a sample"
            elif cap < cfg.min_cap:
                excluded[node.node] = why or f"cap {cap:.2f} is under the minimum {cfg.min_cap}"
            else:
                feasible.append(node)
        if not feasible:
            detail = "; ".join(f"{n}: {w}" for n, w in list(excluded.items())[:5]) or "no nodes"
            reason = f"no node can train ({detail})"
            return PlanDecision(False, reason, caps=caps, excluded=excluded, steps=job.steps)
        capacity = sum(n.max_share for n in feasible)
        if capacity < batch:
            reason = (
                f"global batch {batch} does not fit: the nodes that may train hold at most {capacity} "
                "samples per step; lower the global batch or add nodes"
            )
            return PlanDecision(False, reason, caps=caps, excluded=excluded, steps=job.steps)
        rho_all = np.array([n.rate * caps[n.node] for n in feasible])
        ideal = job.epochs * job.dataset_size / float(rho_all.sum())

        # Search the participant set. The all-reduce cost depends only on how many nodes take
        # part and on the slowest link among them, so for each link-speed level, the k fastest
        # nodes (by rho) with at least that bandwidth, k on a grid and then refined.
        bandwidth = np.array([n.bandwidth_bps for n in feasible])
        over_all = np.array([n.overhead_s for n in feasible])
        ub_all = np.array([float(n.max_share) for n in feasible])
        # A participant that must start (or re-form) first delays the whole job once: its
        # start-up, paid back over the steps left, counts in the step it is compared by.
        start_all = np.array([n.startup_s for n in feasible]) / job.left
        lat_all = np.array([n.latency(net.latency_s) for n in feasible])
        best_cost, best_set = float("inf"), [0]
        for i in range(len(feasible)):  # one node alone: no all-reduce at all
            alone = batch / rho_all[i] + over_all[i] + start_all[i]
            if ub_all[i] >= batch and alone < best_cost:
                best_cost, best_set = alone, [i]
        # ... and for each link-latency level (a ring waits for its slowest hop: a fast node with a
        # slow hop must not be in every prefix it heads), those with at most that latency
        levels = [(bw, lat) for bw in _bandwidth_levels(bandwidth) for lat in _latency_levels(lat_all)]
        for level, lat_level in levels:
            order = [
                i
                for i in sorted(range(len(feasible)), key=lambda i: (-rho_all[i], feasible[i].node))
                if bandwidth[i] >= level and lat_all[i] <= lat_level
            ]
            if not order:
                continue
            rho, over, ub = rho_all[order], over_all[order], ub_all[order]
            start = np.maximum.accumulate(start_all[order])
            lat = np.maximum.accumulate(lat_all[order])

            def cost(
                k: int,
                rho: np.ndarray = rho,
                over: np.ndarray = over,
                ub: np.ndarray = ub,
                level: float = level,
                start: np.ndarray = start,
                lat: np.ndarray = lat,
            ) -> float:
                t = waterfill_time(rho[:k], over[:k], ub[:k], batch)
                return t + allreduce_s(k, job.model_bytes, level, float(lat[k - 1])) + float(start[k - 1])

            grid = candidate_sizes(len(order))
            costs = {k: cost(k) for k in grid}
            best = min(costs, key=lambda k: (costs[k], k))
            pos = grid.index(best)
            lo = grid[pos - 1] if pos > 0 else 1
            hi = grid[pos + 1] if pos + 1 < len(grid) else best
            for k in range(lo, hi + 1):
                if k not in costs:
                    costs[k] = cost(k)
            best = min(costs, key=lambda k: (costs[k], k))
            if costs[best] < best_cost:
                best_cost, best_set = costs[best], order[:best]

        chosen_idx = _improve(set(best_set), feasible, rho_all, batch, job, net)
        chosen = [feasible[i] for i in chosen_idx]
        chosen.sort(key=lambda n: n.node)  # ranks in node-id order: stable across re-plans
        c_rho = np.array([n.rate * caps[n.node] for n in chosen])
        c_over = np.array([n.overhead_s for n in chosen])
        c_ub = np.array([float(n.max_share) for n in chosen])
        real, _t, _status = self._lp(len(chosen)).solve(1.0 / c_rho, c_over, c_ub, batch)
        if real is None:  # the solver failed: the water-filling solution is exact for the same LP
            t = waterfill_time(c_rho, c_over, c_ub, batch)
            real = np.minimum(np.maximum(c_rho * (t - c_over), 0.0), c_ub)
            real *= batch / real.sum()
        shares = integer_shares(list(real), list(c_rho), list(c_over), [n.max_share for n in chosen], batch)
        final = [(n, s) for n, s in zip(chosen, shares, strict=True) if s > 0]
        compute = max(s / (n.rate * caps[n.node]) + n.overhead_s for n, s in final)
        slowest = max(n.latency(net.latency_s) for n, _ in final)
        ar = allreduce_s(len(final), job.model_bytes, min(n.bandwidth_bps for n, _ in final), slowest)
        step = compute + ar
        final_idx = [next(i for i, f in enumerate(feasible) if f is n) for n, _ in final]
        for i, n in enumerate(feasible):
            if all(n is not m for m, _ in final):
                excluded[n.node] = _why_left_out(i, final_idx, feasible, rho_all, batch, job, net)
        return PlanDecision(
            True,
            participants=tuple(n.node for n, _ in final),
            shares={n.node: s for n, s in final},
            compute_s=compute,
            allreduce_s=ar,
            step_s=step,
            makespan_s=job.steps * step,
            ideal_makespan_s=ideal,
            uniform_makespan_s=job.steps * _uniform_step(feasible, caps, job, net),
            caps=caps,
            excluded=excluded,
            steps=job.steps,
            startup_s=max(n.startup_s for n, _ in final),
        )


def _why_left_out(
    i: int,
    chosen: list[int],
    nodes: Sequence[NodeModel],
    rho: np.ndarray,
    batch: int,
    job: JobModel,
    net: NetworkModel,
) -> str:
    """Why feasible node ``i`` does not train, in words: with it the step (its start-up paid
    back over the steps left included) would take longer, and which part grew most."""
    n = nodes[i]
    if len(nodes) > _EXACT_UP_TO:
        return "not worth its all-reduce cost"
    arr = _arrays(rho, nodes, job, net)
    with_it = _set_parts(sorted({*chosen, i}), nodes, arr, batch, job, net)
    without = _set_parts(chosen, nodes, arr, batch, job, net)
    if with_it is None or without is None:
        return "not worth it: the step would not be shorter with it"
    # what grew most with it: the compute (its rate at its cap), the all-reduce (its link, one
    # more member) or the start-up it must pay first, spread over the steps left
    grew = [w - o for w, o in zip(with_it, without, strict=True)]
    cause = max(range(3), key=lambda k: grew[k])
    step_with = f"a step {sum(with_it):.2f} s with it, {sum(without):.2f} s without"
    if cause == 1:
        mbit = n.bandwidth_bps * 8 / 1e6
        if n.bandwidth_bps < min(nodes[j].bandwidth_bps for j in chosen):
            ar = with_it[1]
            return f"not worth its link: at {mbit:.0f} Mb/s every all-reduce would take {ar:.2f} s ({step_with})"
        return f"not worth its all-reduce cost: {with_it[1]:.2f} s with it, {without[1]:.2f} s without ({step_with})"
    if cause == 2:
        return (
            f"not worth its start-up: {n.startup_s:.1f} s before it trains, over the {job.left} steps left "
            f"{with_it[2]:.2f} s a step ({step_with})"
        )
    return f"not worth its compute: at its rate and cap its share would take {with_it[0]:.2f} s ({step_with})"


def _latency_levels(latency: np.ndarray, most: int = 4) -> list[float]:
    """The distinct link latencies (at most ``most`` quantiles of them, always the largest),
    lowest first: one level when the links are alike (unprobed ones all are)."""
    levels = np.unique(latency)
    if len(levels) > most:
        levels = np.unique(np.quantile(latency, np.linspace(0, 1, most), method="higher"))
    return [float(x) for x in levels]


def _bandwidth_levels(bandwidth: np.ndarray, most: int = 8) -> list[float]:
    """The distinct link speeds (at most ``most`` quantiles of them), slowest first."""
    levels = np.unique(bandwidth)
    if len(levels) > most:
        levels = np.unique(np.quantile(bandwidth, np.linspace(0, 1, most), method="lower"))
    return [float(x) for x in levels]


_EXACT_UP_TO = 64  # feasible nodes: above this, the local search uses the LP's step time


@dataclass(frozen=True)
class _Arrays:
    rho: np.ndarray
    over: np.ndarray
    ub: np.ndarray
    bw: np.ndarray
    start: np.ndarray  # start-up paid back per step left
    lat: np.ndarray  # each node's link latency (the network model's where unknown)


def _arrays(rho: np.ndarray, nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel) -> _Arrays:
    return _Arrays(
        rho,
        np.array([n.overhead_s for n in nodes]),
        np.array([float(n.max_share) for n in nodes]),
        np.array([n.bandwidth_bps for n in nodes]),
        np.array([n.startup_s for n in nodes]) / job.left,
        np.array([n.latency(net.latency_s) for n in nodes]),
    )


def _set_parts(
    idx: Sequence[int], nodes: Sequence[NodeModel], arr: _Arrays, batch: int, job: JobModel, net: NetworkModel
) -> tuple[float, float, float] | None:
    """A participant set's step: (compute, all-reduce, start-up paid back per step); None when
    the set cannot hold the batch."""
    if not idx:
        return None
    ix = np.fromiter(idx, dtype=np.intp, count=len(idx))
    ub = arr.ub[ix]
    if ub.sum() < batch:
        return None
    if len(nodes) <= _EXACT_UP_TO:  # exact integer step time
        r, o = arr.rho[ix], arr.over[ix]
        shares = np.array(integer_shares([0.0] * len(ix), list(r), list(o), [int(u) for u in ub], batch))
        used = shares > 0
        compute = float((shares[used] / r[used] + o[used]).max())
        k, bw, start = int(used.sum()), float(arr.bw[ix][used].min()), float(arr.start[ix][used].max())
        lat = float(arr.lat[ix][used].max())
    else:  # the LP's step time
        compute = waterfill_time(arr.rho[ix], arr.over[ix], ub, batch)
        k, bw, start, lat = len(ix), float(arr.bw[ix].min()), float(arr.start[ix].max()), float(arr.lat[ix].max())
    return compute, allreduce_s(k, job.model_bytes, bw, lat), start


def _set_cost(
    idx: Sequence[int], nodes: Sequence[NodeModel], arr: _Arrays, batch: int, job: JobModel, net: NetworkModel
) -> float:
    parts = _set_parts(idx, nodes, arr, batch, job, net)
    return float("inf") if parts is None else sum(parts)


def _improve(
    start: set[int], nodes: Sequence[NodeModel], rho: np.ndarray, batch: int, job: JobModel, net: NetworkModel
) -> list[int]:
    """Local search from the best prefix of the fastest nodes: drop one, add one, or swap (small
    clusters), while the step time improves. It finds what the prefix order misses: a fast node
    with little memory, a slow link not worth its all-reduce. On large clusters only the 16
    slowest, lowest-bandwidth or highest-latency members are tried for removal and the 16 fastest
    outsiders for addition."""
    arr = _arrays(rho, nodes, job, net)
    small = len(nodes) <= _EXACT_UP_TO
    by_speed = sorted(range(len(nodes)), key=lambda i: -rho[i])
    current = set(start)
    cost = _set_cost(sorted(current), nodes, arr, batch, job, net)
    for _ in range(8):
        outside = [i for i in by_speed if i not in current][: (64 if small else 16)]
        members = sorted(current, key=lambda i: rho[i])
        if not small:
            worst = sorted(current, key=lambda i: arr.bw[i])[:16] + sorted(current, key=lambda i: -arr.lat[i])[:16]
            members = list(dict.fromkeys(members[:16] + worst))
        moves: list[set[int]] = [current - {i} for i in members if len(current) > 1]
        moves += [current | {j} for j in outside]
        if len(nodes) <= 16:
            moves += [(current - {i}) | {j} for i in current for j in outside]
        best_move, best_cost = None, cost
        for move in moves:
            c = _set_cost(sorted(move), nodes, arr, batch, job, net)
            if c < best_cost * (1 - 1e-12):
                best_move, best_cost = move, c
        if best_move is None:
            break
        current, cost = best_move, best_cost
    return sorted(current)


def _uniform_step(nodes: Sequence[NodeModel], caps: dict[str, float], job: JobModel, net: NetworkModel) -> float:
    """What torchrun + DistributedSampler would do: every node the same share (ceil(B/k))."""
    k = len(nodes)
    share = -(-job.global_batch // k)
    if any(share > n.max_share for n in nodes):
        return float("inf")
    compute = max(share / (n.rate * caps[n.node]) + n.overhead_s for n in nodes)
    slowest = max(n.latency(net.latency_s) for n in nodes)
    return compute + allreduce_s(k, job.model_bytes, min(n.bandwidth_bps for n in nodes), slowest)


def uniform_plan(nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel | None = None) -> PlanDecision:
    """The baseline deepedge is measured against: every node that can hold its part takes the
    same share of each global batch (the remainder to the first ranks), at full intensity, LC
    apps ignored: what torchrun with a DistributedSampler does."""
    return _baseline(nodes, job, net, proportional=False)


def proportional_plan(nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel | None = None) -> PlanDecision:
    """The second baseline: every node trains, at full intensity, with shares in proportion to
    its throughput (the batch sizes of LB-BSP-style load balancing: every node finishes its
    compute together) — but no node is left out for its link and LC apps are ignored."""
    return _baseline(nodes, job, net, proportional=True)


def _baseline(nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel | None, proportional: bool) -> PlanDecision:
    net = net or NetworkModel()
    usable = sorted(
        (n for n in nodes if n.rate >= MIN_RATE and n.max_share > 0 and not n.unavailable), key=lambda n: n.node
    )
    k = len(usable)
    what = "a proportional" if proportional else "an even"
    if k == 0 or sum(n.max_share for n in usable) < job.global_batch:
        return PlanDecision(False, f"no nodes can hold {what} split of the global batch", steps=job.steps)
    if proportional:
        rates = [n.rate for n in usable]
        real = [job.global_batch * r / sum(rates) for r in rates]
        split = integer_shares(real, rates, [0.0] * k, [n.max_share for n in usable], job.global_batch)
        shares = {n.node: s for n, s in zip(usable, split, strict=True)}
    else:
        base, extra = divmod(job.global_batch, k)
        shares = {n.node: base + (1 if i < extra else 0) for i, n in enumerate(usable)}
    if any(shares[n.node] > n.max_share for n in usable):
        return PlanDecision(False, f"{what} split does not fit every node's memory", steps=job.steps)
    final = [n for n in usable if shares[n.node] > 0]
    caps = {n.node: 1.0 for n in final}
    compute = max(shares[n.node] / n.rate + n.overhead_s for n in final)
    slowest = max(n.latency(net.latency_s) for n in final)
    ar = allreduce_s(len(final), job.model_bytes, min(n.bandwidth_bps for n in final), slowest)
    ideal = job.epochs * job.dataset_size / sum(n.rate for n in usable)
    return PlanDecision(
        True,
        participants=tuple(n.node for n in final),
        shares={n.node: shares[n.node] for n in final},
        caps=caps,
        compute_s=compute,
        allreduce_s=ar,
        step_s=compute + ar,
        makespan_s=job.steps * (compute + ar),
        ideal_makespan_s=ideal,
        uniform_makespan_s=job.steps * (compute + ar),
        steps=job.steps,
        startup_s=max(n.startup_s for n in final),
    )


_DEFAULT = Planner()


def plan(nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel | None = None) -> PlanDecision:
    """``Planner().plan`` with a shared default planner (and its compiled problems)."""
    return _DEFAULT.plan(nodes, job, net)
