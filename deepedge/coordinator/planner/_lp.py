"""The share LP in cvxpy, built once per padded problem size with Parameters, so a re-plan
(a node lost, a cap lowered, a new job) only re-solves.

    minimise    T
    subject to  inv_rho_i * b_i + o_i <= T,   0 <= b_i <= m_i,   sum_i b_i = B

Nodes outside the participant set (and padding) get inv_rho = o = m = 0, which pins b_i = 0.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import numpy.typing as npt

__all__ = ["ShareLp", "padded_size"]


def padded_size(n: int) -> int:
    """Problem sizes come in powers of two (at least 8), so losing or gaining a node rarely
    changes the size and never forces a recompile on its own."""
    size = 8
    while size < n:
        size *= 2
    return size


class ShareLp:
    def __init__(self, size: int, solver: str) -> None:
        self.size = size
        self.solver = solver
        self.b = cp.Variable(size)
        self.t = cp.Variable()
        self.inv_rho = cp.Parameter(size, nonneg=True)
        self.overhead = cp.Parameter(size, nonneg=True)
        self.ub = cp.Parameter(size, nonneg=True)
        self.batch = cp.Parameter(nonneg=True)
        constraints = [
            self.b >= 0,
            self.b <= self.ub,
            cp.sum(self.b) == self.batch,
            cp.multiply(self.inv_rho, self.b) + self.overhead <= self.t,
        ]
        self.problem = cp.Problem(cp.Minimize(self.t), constraints)
        assert self.problem.is_dpp()
        self.solves = 0

    def solve(
        self,
        inv_rho: npt.NDArray[np.float64],
        overhead: npt.NDArray[np.float64],
        ub: npt.NDArray[np.float64],
        batch: int,
    ) -> tuple[npt.NDArray[np.float64] | None, float, str]:
        """(shares, T, status) for the first ``len(inv_rho)`` slots; shares is None on failure."""
        n = len(inv_rho)
        pad = self.size - n
        self.inv_rho.value = np.concatenate([inv_rho, np.zeros(pad)])
        self.overhead.value = np.concatenate([overhead, np.zeros(pad)])
        self.ub.value = np.concatenate([ub, np.zeros(pad)])
        self.batch.value = float(batch)
        self.solves += 1
        try:
            self.problem.solve(solver=self.solver, warm_start=True)
        except cp.error.SolverError as exc:
            return None, float("inf"), f"solver error: {exc}"
        if self.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or self.b.value is None:
            return None, float("inf"), str(self.problem.status)
        return np.asarray(self.b.value[:n], dtype=np.float64), float(self.t.value), str(self.problem.status)
