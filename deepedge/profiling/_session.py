"""A profiling session: the design, its runs, the adaptive step, the choice of model and the
knowledge-base entry. Independent of where runs are measured: ``measure(points, phase)`` is a
node daemon over MQTT (``deepedge profile NODE --interference``) or this machine directly
(``deepedge bench interference``, the tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from deepedge.profiling._design import Space, adaptive_points, latin_hypercube
from deepedge.profiling._kb import KnowledgeBase, ProfileKey
from deepedge.profiling._space import Point, Run
from deepedge.profiling._surrogate import CvResult, Surrogate, choose, cross_validate, fit, gp_uncertainty
from deepedge.profiling._table import CapTable, compile_table

__all__ = ["DEFAULT_KINDS", "Measure", "ProfileSession", "SessionResult", "fit_runs"]

Measure = Callable[[list[Point], str], list[Run]]
DEFAULT_KINDS = ("loglinear", "gbm", "gp")


@dataclass
class SessionResult:
    key: ProfileKey
    profile_id: int | None
    runs: list[Run]
    surrogate: Surrogate
    candidates: list[CvResult]  # every kind's cross-validated figures, the linear baseline included
    table: CapTable
    full_grid: int

    @property
    def budget(self) -> int:
        return len(self.runs)


def fit_runs(
    app: str, runs: Sequence[Run], space: Space, q: float = 0.95, kinds: Sequence[str] = DEFAULT_KINDS
) -> tuple[Surrogate, list[CvResult], CapTable]:
    """The model chosen by cross-validated error (leave-one-mix-out, ``choose``) among ``kinds``
    (the linear baseline is cross-validated too, for the record), and its cap table at quantile
    ``q``."""
    fitted = [fit(k, runs) for k in kinds]
    best = choose(fitted)
    candidates = [s.cv for s in fitted] + [cross_validate("linear", runs)]
    table = compile_table(
        app,
        best.kind,
        q,
        lambda feats: (best.quantile_ms(feats, q).tolist(), best.median_ms(feats).tolist()),
        (space.rate_min, space.rate_max),
        cpu_max=max(0.5, round(max(r.cpu for r in runs) + 0.05, 1)),  # background cores seen in the runs
    )
    return best, candidates, table


class ProfileSession:
    def __init__(
        self,
        key: ProfileKey,
        space: Space,
        kb: KnowledgeBase | None = None,
        *,
        q: float = 0.95,
        seed: int = 0,
        kinds: Sequence[str] = DEFAULT_KINDS,
        training_model: str = "cnn-small",
        source: str = "",
    ) -> None:
        self.key, self.space, self.kb = key, space, kb
        self.q, self.seed, self.kinds = q, seed, tuple(kinds)
        self.training_model, self.source = training_model, source

    def run(
        self, measure: Measure, budget: int, adaptive: int = 0, log: Callable[[str], None] | None = None
    ) -> SessionResult:
        """``budget`` runs in all: ``budget - adaptive`` from the Latin hypercube, then
        ``adaptive`` where a Gaussian process on the first runs is least certain."""
        say = log or (lambda _m: None)
        if budget - adaptive < 4:
            raise ValueError(f"a budget of {budget} with {adaptive} adaptive runs leaves too few design runs")
        design = latin_hypercube(self.space, budget - adaptive, self.seed)
        say(f"design: {len(design)} Latin-hypercube runs of a {self.space.full_grid}-run grid")
        runs = measure(design, "design")
        taken = list(design)
        if adaptive:
            extra = adaptive_points(self.space, gp_uncertainty(runs), adaptive, taken, seed=self.seed + 1)
            say(f"adaptive: {len(extra)} runs where the model is least certain")
            runs += measure(extra, "adaptive")
            taken += extra
        best, candidates, table = fit_runs(self.key.app, runs, self.space, self.q, self.kinds)
        say(
            "model: "
            + ", ".join(
                f"{c.kind} {c.median_ape:.1%}"
                + (f", leave-one-mix-out {c.mix_median_ape:.1%}" if c.mix_median_ape is not None else "")
                + f" (coverage {c.coverage:.0%})"
                for c in candidates
            )
            + f" -> {best.kind}"
        )
        pid = None
        if self.kb is not None:
            pid = self.kb.profile_id(self.key, self.training_model, self.source, asdict(self.space))
            self.kb.set_design(pid, [asdict(p) for p in taken])
            self.kb.add_runs(pid, runs)
            self.kb.set_model(pid, best.kind, self.q, best.cv.to_dict(), [c.to_dict() for c in candidates], table)
        return SessionResult(self.key, pid, runs, best, candidates, table, self.space.full_grid)
