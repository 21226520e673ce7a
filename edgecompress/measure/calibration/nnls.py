"""Non-negative least squares (Lawson and Hanson's active-set method), so a fit needs numpy only.

Prices are seconds per unit of work: a negative one would make more work take less time, so the fit keeps them
at zero or above rather than letting correlated features cancel each other out.
"""

from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, *, max_iterations: int | None = None) -> np.ndarray:
    """x >= 0 minimizing ||a x - b||_2 (Lawson & Hanson, Solving Least Squares Problems, 1974, ch. 23)."""
    rows, cols = a.shape
    x = np.zeros(cols)
    passive = np.zeros(cols, dtype=bool)
    tolerance = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(rows, cols)
    limit = max_iterations or 3 * cols
    gradient = a.T @ (b - a @ x)
    for _ in range(limit):
        if passive.all() or (gradient[~passive] <= tolerance).all():
            break
        candidate = np.where(~passive, gradient, -np.inf)
        passive[int(np.argmax(candidate))] = True
        while True:
            z = np.zeros(cols)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            # step back towards x until the first passive variable reaches zero, then drop those at zero
            blocking = passive & (z <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > tolerance
            x[~passive] = 0.0
        gradient = a.T @ (b - a @ x)
    return x
