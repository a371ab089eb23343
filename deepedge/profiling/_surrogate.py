"""Surrogate models of an LC app's p95 latency, with their uncertainty, fitted from profiling
runs (FECBench's surrogate models), and the choice among them by cross-validated error.

Every model predicts log(p95) from the runs' features (training intensity, LC request rate,
achieved stressor levels, GPU utilisation); its prediction intervals are conformal: the
quantiles of its own cross-validated residuals (log(measured) - log(predicted)), so a stated 95 %
interval is what the model achieved on runs it had not seen, not what it believes of itself.

The choice among them is by **leave-one-mix-out** cross-validated error where the runs have
three stressor mixes or more: each mix's runs (``Point.mix()``: which stressors were on) are
predicted by the model fitted on the other mixes, which is what a board meets in the field (a
background load no profile run had). Randomly drawn folds keep every mix in training, so they
reward fitting the design's mixes closely; on the eight stored runs of ``deepedge bench
interference`` the model chosen by leave-one-mix-out error had a held-out median error as low as
or lower than the one chosen by random folds every time (its worst scenario was worse in two;
docs/benchmarks/interference.md). The
intervals stay conformal on the random folds' residuals: measured, they cover the held-out
mixes at their stated level.

- ``linear``: today's coordinator model, ``p95 = base + slope * intensity`` (least squares,
  slope >= 0), fitted on the same runs: the baseline every figure is compared with.
- ``loglinear``: log(p95) linear in the features and their products with the intensity, with
  non-negative coefficients (monotone non-decreasing in every feature).
- ``gbm``: gradient boosting (scikit-learn ``HistGradientBoostingRegressor``, quantile loss at
  the median) with a monotone non-decreasing constraint on every feature.
- ``gp``: a Gaussian process (anisotropic RBF + white noise) on log(p95); not monotone by
  construction: its tables are made monotone by a running maximum (an upper envelope).

scikit-learn is imported only when a model is fitted (the node daemon never does)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepedge.profiling._space import FEATURES, Point, Run
from deepedge.profiling._table import conformal_quantile

__all__ = [
    "KINDS",
    "MIX_CV_MIN",
    "CvResult",
    "Surrogate",
    "choose",
    "cross_validate",
    "fit",
    "gp_uncertainty",
    "point_features",
    "select",
]

KINDS = ("linear", "loglinear", "gbm", "gp")
_U = FEATURES.index("intensity")


def point_features(p: Point) -> list[float]:
    """The features of a design point as asked (for candidates not yet measured)."""
    return [p.intensity, p.rate, p.cpu, p.cache, p.mem, p.io, p.gpu]


def _xy(runs: Sequence[Run], columns: tuple[str, ...] = FEATURES) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([r.features(columns) for r in runs], dtype=float)
    y = np.log(np.maximum(1e-3, np.array([r.p95_ms for r in runs], dtype=float)))
    return x, y


def _interactions(x: np.ndarray) -> np.ndarray:
    u = x[:, [_U]]
    others = np.delete(x, _U, axis=1)
    return np.hstack([x, u * others, u * u])


class _Linear:
    """p95 = base + slope * u (ms), slope >= 0: what the coordinator fits today."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Linear:
        u, ms = x[:, _U], np.exp(y)
        if np.ptp(u) < 1e-9:
            self.base, self.slope = float(np.mean(ms)), 0.0
            return self
        slope, _ = np.polyfit(u, ms, 1)
        self.slope = max(0.0, float(slope))
        self.base = max(1e-3, float(np.mean(ms) - self.slope * np.mean(u)))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(1e-3, self.base + self.slope * x[:, _U]))


class _LogLinear:
    def fit(self, x: np.ndarray, y: np.ndarray) -> _LogLinear:
        from sklearn.linear_model import LinearRegression

        self.scale = np.maximum(1e-9, x.max(axis=0))
        self.model = LinearRegression(positive=True).fit(_interactions(x / self.scale), y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(_interactions(x / self.scale)))


class _Gbm:
    def fit(self, x: np.ndarray, y: np.ndarray) -> _Gbm:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.model = HistGradientBoostingRegressor(
            loss="quantile",
            quantile=0.5,
            monotonic_cst=[1] * x.shape[1],
            max_iter=150,
            learning_rate=0.1,
            max_leaf_nodes=6,
            min_samples_leaf=max(2, min(8, len(y) // 10)),
            l2_regularization=0.1,
            random_state=0,
        ).fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x))


class _Gp:
    def fit(self, x: np.ndarray, y: np.ndarray) -> _Gp:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        self.scale = np.maximum(1e-9, x.max(axis=0))
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.ones(x.shape[1]), (5e-2, 1e3)) + WhiteKernel(
            1e-2, (1e-5, 1.0)
        )
        self.model = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hyperparameters at their bounds: said by the CV figures
            self.model.fit(x / self.scale, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x / self.scale))

    def std(self, x: np.ndarray) -> np.ndarray:
        _, sd = self.model.predict(x / self.scale, return_std=True)
        return np.asarray(sd)


_MODELS: dict[str, Any] = {"linear": _Linear, "loglinear": _LogLinear, "gbm": _Gbm, "gp": _Gp}


@dataclass
class CvResult:
    """Cross-validated figures of one kind of model on the runs."""

    kind: str
    folds: int
    median_ape: float  # median |predicted - measured| / measured of the median prediction
    p90_ape: float
    coverage: float  # share of runs inside the 95 % interval built from the other folds' residuals
    residuals: list[float] = field(default_factory=list)  # signed log residuals, out of fold
    # median error of each stressor mix's runs predicted by the model fitted on the other mixes
    # (None under MIX_CV_MIN mixes): what the choice is made on
    mix_median_ape: float | None = None

    @property
    def choice_ape(self) -> float:
        """The error the choice among kinds is made on: leave-one-mix-out where there is one."""
        return self.median_ape if self.mix_median_ape is None else self.mix_median_ape

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "folds": self.folds,
            "median_ape": self.median_ape,
            "p90_ape": self.p90_ape,
            "coverage": self.coverage,
            "mix_median_ape": self.mix_median_ape,
        }


def _conformal(residuals: np.ndarray, q: float) -> float:
    """The q-quantile of residuals with the finite-sample correction of split conformal
    prediction (:func:`conformal_quantile`)."""
    return conformal_quantile(np.asarray(residuals, dtype=float).ravel().tolist(), q)


MIX_CV_MIN = 3  # stressor mixes in the runs for a leave-one-mix-out error


def _out_of_fold(kind: str, x: np.ndarray, y: np.ndarray, tests: Sequence[np.ndarray]) -> np.ndarray:
    """Each run predicted by ``kind`` fitted on the runs outside its test set."""
    pred = np.empty(len(y))
    everything = np.arange(len(y))
    for test in tests:
        train = np.setdiff1d(everything, test)
        pred[test] = _MODELS[kind]().fit(x[train], y[train]).predict(x[test])
    return pred


def _ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(np.abs(np.exp(pred) - np.exp(y)) / np.exp(y))


def _mix_folds(runs: Sequence[Run]) -> list[np.ndarray] | None:
    """Leave-one-mix-out test sets: the indices of each stressor mix's runs; None under
    ``MIX_CV_MIN`` mixes."""
    mixes = np.array([r.asked.mix() for r in runs])
    names = sorted(set(mixes.tolist()))
    return None if len(names) < MIX_CV_MIN else [np.flatnonzero(mixes == m) for m in names]


def cross_validate(
    kind: str, runs: Sequence[Run], folds: int = 5, seed: int = 0, columns: tuple[str, ...] = FEATURES
) -> CvResult:
    """Out-of-fold figures of ``kind`` on ``runs``, from the features ``columns`` (the model's by
    default; benches compare others): ``folds`` random folds (the errors and the residuals the
    intervals come from) and leave-one-mix-out (the error the choice is made on)."""
    if columns[:1] != ("intensity",):
        raise ValueError(f"features {columns}: the training intensity must come first")
    x, y = _xy(runs, columns)
    n = len(y)
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    pred = _out_of_fold(kind, x, y, [order[k::folds] for k in range(folds)])
    res = y - pred
    ape = _ape(pred, y)
    mix_folds = _mix_folds(runs)
    mix_ape = None if mix_folds is None else float(np.median(_ape(_out_of_fold(kind, x, y, mix_folds), y)))
    # coverage of the 95 % interval, each run judged by residuals of the other runs
    inside = 0
    for i in range(n):
        others = np.delete(res, i)
        lo, hi = _conformal(others, 0.025), _conformal(others, 0.975)
        inside += lo <= res[i] <= hi
    return CvResult(
        kind,
        folds,
        float(np.median(ape)),
        float(np.quantile(ape, 0.9)),
        inside / n,
        [float(v) for v in res],
        mix_ape,
    )


@dataclass
class Surrogate:
    """A fitted model and its out-of-fold residuals (log space): predictions with intervals."""

    kind: str
    model: Any
    residuals: np.ndarray
    cv: CvResult
    runs: int

    def median_ms(self, x: Sequence[Sequence[float]]) -> np.ndarray:
        return np.asarray(np.exp(self.model.predict(np.asarray(x, dtype=float))))

    def quantile_ms(self, x: Sequence[Sequence[float]], q: float) -> np.ndarray:
        """The q-quantile of the p95 at ``x`` (e.g. q = 0.95: the upper bound caps use)."""
        return np.asarray(np.exp(self.model.predict(np.asarray(x, dtype=float)) + _conformal(self.residuals, q)))

    def interval_ms(self, x: Sequence[Sequence[float]], level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        a = (1 - level) / 2
        return self.quantile_ms(x, a), self.quantile_ms(x, 1 - a)


def fit(kind: str, runs: Sequence[Run], folds: int = 5, columns: tuple[str, ...] = FEATURES) -> Surrogate:
    """A model of ``kind`` fitted on every run, with its cross-validated residuals; from the
    features ``columns`` (predict from ``Run.features(columns)`` then)."""
    if kind not in _MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if len(runs) < 4:
        raise ValueError(f"{len(runs)} runs: a model needs at least 4")
    cv = cross_validate(kind, runs, folds, columns=columns)
    x, y = _xy(runs, columns)
    return Surrogate(kind, _MODELS[kind]().fit(x, y), np.array(cv.residuals), cv, len(runs))


def choose(fitted: Sequence[Surrogate]) -> Surrogate:
    """The one with the lowest leave-one-mix-out median error (``CvResult.choice_ape``; the
    random folds' where the runs have too few mixes), ties: the lower random-fold error, then
    the higher coverage."""
    return min(fitted, key=lambda s: (round(s.cv.choice_ape, 4), round(s.cv.median_ape, 4), -s.cv.coverage))


def select(runs: Sequence[Run], kinds: Sequence[str] = ("loglinear", "gbm", "gp"), folds: int = 5) -> Surrogate:
    """The kind ``choose`` picks among ``kinds`` fitted on ``runs``."""
    return choose([fit(k, runs, folds) for k in kinds])


def gp_uncertainty(runs: Sequence[Run]) -> Any:
    """A function of candidate points -> the GP's predictive standard deviation of log(p95):
    where the adaptive step looks for its next runs."""
    x, y = _xy(runs)
    gp = _Gp().fit(x, y)

    def std(points: list[Point]) -> list[float]:
        return [float(v) for v in gp.std(np.array([point_features(p) for p in points]))]

    return std
