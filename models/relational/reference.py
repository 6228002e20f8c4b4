"""The same models written directly in numpy: the yardstick of the derived gradients.

Nothing here is derived: each gradient is the textbook formula (softmax minus one-hot; sigmoid
minus target), so agreement with :mod:`.autodiff`'s relational backward pass checks both.
"""

from __future__ import annotations

import numpy as np

from streamcascade.models.relational.engines import Columns


def softmax_regression(x: Columns, y: Columns, weights: Columns,
                       n_events: int) -> tuple[float, Columns]:
    """Loss and gradient of :func:`.models.softmax_regression`; ``y`` holds ``e, c, wt``."""
    features, f_index = np.unique(weights["f"], return_inverse=True)
    k = int(weights["c"].max()) + 1
    w = np.zeros((features.size, k))
    w[f_index, weights["c"]] = weights["v"]
    rows = np.searchsorted(features, x["f"])
    z = np.zeros((n_events, k))
    np.add.at(z, x["e"], x["v"][:, None] * w[rows])
    target = np.zeros((n_events, k))
    target[y["e"], y["c"]] = y["wt"]
    event_weight = target.sum(axis=1)
    top = z.max(axis=1, keepdims=True)
    log_partition = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    loss = float(event_weight @ log_partition - (target * z).sum())
    proba = np.exp(z - log_partition[:, None])
    dz = event_weight[:, None] * proba - target
    grad = np.zeros_like(w)
    np.add.at(grad, rows, x["v"][:, None] * dz[x["e"]])
    return loss, {"f": weights["f"], "c": weights["c"], "v": grad[f_index, weights["c"]]}


def logistic_regression(x: Columns, y: Columns, weights: Columns,
                        n_events: int) -> tuple[float, Columns]:
    """Loss and gradient of :func:`.models.logistic_regression`; ``y`` holds ``e, t, wt``."""
    features, f_index = np.unique(weights["f"], return_inverse=True)
    w = np.zeros(features.size)
    w[f_index] = weights["v"]
    rows = np.searchsorted(features, x["f"])
    z = np.zeros(n_events)
    np.add.at(z, x["e"], x["v"] * w[rows])
    t = np.zeros(n_events)
    wt = np.zeros(n_events)
    t[y["e"]], wt[y["e"]] = y["t"], y["wt"]
    loss = float(wt @ (np.logaddexp(0.0, z) - t * z))
    dz = wt * (1.0 / (1.0 + np.exp(-z)) - t)
    grad = np.zeros_like(w)
    np.add.at(grad, rows, x["v"] * dz[x["e"]])
    return loss, {"f": weights["f"], "v": grad[f_index]}


def adagrad_step(weights: Columns, grad: np.ndarray, learning_rate: float,
                 eps: float = 1e-6) -> Columns:
    """One step of :mod:`.driver`'s update on ``weights`` (``v``, ``g2``, ``decay``) given the
    loss's gradient ``grad`` (aligned with them)."""
    g = grad + weights["decay"] * weights["v"]
    g2 = weights["g2"] + g * g
    return {**weights, "v": weights["v"] - learning_rate * g / (np.sqrt(g2) + eps), "g2": g2}
