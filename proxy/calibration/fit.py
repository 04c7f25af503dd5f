"""Fit integer constants to observations: a robust, relative least-absolute-deviations fit. Pure.

Each observation says ``target ~ offset + sum(n_c * c)``. The fit minimises the sum of relative
absolute errors, ``|target - estimate| / target``, by iteratively reweighted least squares, so
one odd run moves the constants far less than it would a least-squares fit, and a long run does
not outweigh many short ones. A constant that no observation involves keeps its prior value;
constants that always occur together (a base prompt and the one user message of every recorded
run) are split as close to their prior values as the data allows, by a small ridge toward the
prior. The result is rounded and polished by integer steps: whole tokens are enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxy.calibration.observations import Observation

__all__ = ["fit_constants", "loss"]

_ITERATIONS = 60
_RIDGE = 1e-6
_DELTA = 1e-3


def loss(observations: Sequence[Observation], constants: Mapping[str, int | float]) -> float:
    """Sum of relative absolute errors."""
    return sum(abs(_residual(o, constants)) / max(o.target, 1) for o in observations)


def fit_constants(observations: Sequence[Observation], prior: Mapping[str, int]) -> dict[str, int]:
    """Constants (every key of ``prior``) fitted to ``observations``."""
    free = sorted({n for o in observations for n, k in o.basis.counts.items() if k})
    if not free:
        return dict(prior)
    values: dict[str, float] = {k: float(v) for k, v in prior.items()}
    for _ in range(_ITERATIONS):
        weights = [
            1.0 / (max(o.target, 1) * max(abs(_residual(o, values)) / max(o.target, 1), _DELTA))
            for o in observations
        ]
        solved = _weighted_solve(observations, weights, free, values, prior)
        if solved is None:
            break
        values.update(solved)
    fitted = {k: (max(0, round(v)) if k in free else prior[k]) for k, v in values.items()}
    return _polish(observations, fitted, free)


def _residual(o: Observation, constants: Mapping[str, float]) -> float:
    return (
        o.target - o.basis.offset - sum(n * constants.get(k, 0) for k, n in o.basis.counts.items())
    )


def _weighted_solve(
    observations: Sequence[Observation],
    weights: Sequence[float],
    free: list[str],
    values: Mapping[str, float],
    prior: Mapping[str, int],
) -> dict[str, float] | None:
    index = {name: i for i, name in enumerate(free)}
    size = len(free)
    a = [[0.0] * size for _ in range(size)]
    b = [0.0] * size
    for o, w in zip(observations, weights, strict=True):
        x = [0.0] * size
        y = float(o.target - o.basis.offset)
        for name, n in o.basis.counts.items():
            if name in index:
                x[index[name]] += n
            else:
                y -= n * values.get(name, 0)
        for i in range(size):
            if x[i]:
                b[i] += w * x[i] * y
                for j in range(size):
                    a[i][j] += w * x[i] * x[j]
    scale = max((a[i][i] for i in range(size)), default=1.0) or 1.0
    for i, name in enumerate(free):
        a[i][i] += _RIDGE * scale
        b[i] += _RIDGE * scale * prior.get(name, 0)
    solution = _solve(a, b)
    return None if solution is None else dict(zip(free, solution, strict=True))


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular system."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            factor = m[r][col] / m[col][col]
            if factor:
                for c in range(col, n + 1):
                    m[r][c] -= factor * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def _polish(
    observations: Sequence[Observation], constants: dict[str, int], free: list[str]
) -> dict[str, int]:
    best = loss(observations, constants)
    for _ in range(200):
        improved = False
        for name in free:
            for step in (1, -1):
                trial = dict(constants)
                trial[name] = constants[name] + step
                if trial[name] < 0:
                    continue
                value = loss(observations, trial)
                if value < best - 1e-12:
                    constants, best, improved = trial, value, True
        if not improved:
            break
    return constants
