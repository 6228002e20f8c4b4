"""The deferral policy after a stage: how likely is the stage's answer to differ from the expert's?

As in the online-cascade paper, the policy reads what its stage answered (the class probabilities)
and returns the probability of deferring; it is learned online by imitating the expert, whose
action is *answer* when the stage's label equals the demonstrated one and *defer* otherwise. The
paper feeds the raw probabilities to a small MLP trained by squared error. Here the same signal is
fitted by an online logistic regression (AdaGrad) over a few fixed functions of the probabilities
(top probability, margin, entropy, the stage's own error estimate on a log scale, the predicted
class, the text's length), so that its output is a *calibrated* probability that the stage is
wrong: the operating-point controller adds these probabilities up as an expected quality loss.

Predicting never learns; :meth:`DeferralPolicy.learn` is the only update.

>>> import numpy as np
>>> policy = DeferralPolicy(n_classes=2)
>>> sure, unsure = np.array([[0.99, 0.01]]), np.array([[0.55, 0.45]])
>>> for _ in range(300):
...     policy.learn(np.vstack([sure, unsure]), np.array([10, 10]), np.array([False, True]))
>>> low, high = policy.defer_proba(np.vstack([sure, unsure]), np.array([10, 10]))
>>> bool(low < 0.2 < 0.8 < high)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EPS = 1e-6


class DeferralPolicy:
    """An online, calibrated estimate of P(stage's answer is wrong | stage's probabilities).

    Parameters
    ----------
    n_classes
        Number of the task's classes (columns of the stage's probabilities).
    learning_rate
        AdaGrad's base step.
    l2
        L2 penalty on the weights (not the intercept).
    calibration
        The paper's calibration: added to the expert's *defer* target (clipped to 1), making the
        policy more cautious. 0 keeps the estimate calibrated.
    n_extra
        Number of extra inputs a stage offers per text.
    averaging
        Predictions use the average of the weights over about this many recent updates (1: the
        last weights), which smooths the noise of single online steps.
    """

    def __init__(self, n_classes: int, learning_rate: float = 0.3, l2: float = 1e-4,
                 calibration: float = 0.0, n_extra: int = 0, averaging: int = 500) -> None:
        self.n_classes = int(n_classes)
        self.learning_rate = float(learning_rate)
        self.l2 = float(l2)
        self.calibration = float(calibration)
        self.n_extra = int(n_extra)
        self.n_features = 7 + 2 * self.n_classes + self.n_extra
        self.averaging = int(averaging)
        self.weights = np.zeros(self.n_features, dtype=np.float64)
        self.grad_sq = np.zeros(self.n_features, dtype=np.float64)
        # What predictions use: a running average of recent weights, steadier than the last step.
        self.mean_weights = np.zeros(self.n_features, dtype=np.float64)
        self.n_updates = 0

    def features(self, proba: np.ndarray, lengths: np.ndarray,
                 extra: np.ndarray | None = None) -> np.ndarray:
        """The policy's inputs for each row of ``proba``: shape ``(n, n_features)``.

        ``extra`` holds ``n_extra`` cheap columns a stage offers about each text (see
        :meth:`HashedTextStage.familiarity`)."""
        proba = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)
        n, k = proba.shape
        ordered = np.sort(proba, axis=1)
        top = ordered[:, -1]
        margin = top - ordered[:, -2]
        entropy = -(proba * np.log(proba)).sum(axis=1) / np.log(k)
        log_err = -np.log(np.clip(1.0 - top, _EPS, 1.0)) / 4.0  # 0 unsure .. ~3.5 certain
        predicted = np.zeros((n, k))
        predicted[np.arange(n), proba.argmax(axis=1)] = 1.0
        length = np.log1p(np.asarray(lengths, dtype=np.float64)) / 8.0
        columns = [np.ones(n), top, margin, entropy, log_err, log_err**2, length, predicted,
                   predicted * top[:, None]]
        if self.n_extra:
            if extra is None or np.shape(extra) != (n, self.n_extra):
                raise ValueError(f"the policy needs {self.n_extra} extra inputs per row")
            columns.append(np.asarray(extra, dtype=np.float64))
        return np.column_stack(columns)

    def defer_proba(self, proba: np.ndarray, lengths: np.ndarray,
                    extra: np.ndarray | None = None) -> np.ndarray:
        """P(defer) = estimated P(stage wrong) for each row; never changes state."""
        return self.defer_proba_of(self.features(proba, lengths, extra))

    def predicted_class(self, features: np.ndarray) -> np.ndarray:
        """The stage's predicted class, read back from inputs made by :meth:`features`."""
        return np.asarray(features[..., 7:7 + self.n_classes].argmax(axis=-1))

    def top_proba(self, features: np.ndarray) -> np.ndarray:
        """The stage's top class probability, read back from inputs made by :meth:`features`."""
        return np.asarray(features[..., 1])

    def defer_proba_of(self, features: np.ndarray) -> np.ndarray:
        """P(defer) from inputs already made by :meth:`features`."""
        z = np.asarray(features, dtype=np.float64) @ self.mean_weights
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def learn(self, proba: np.ndarray, lengths: np.ndarray, stage_wrong: np.ndarray,
              sample_weight: np.ndarray | None = None, extra: np.ndarray | None = None) -> None:
        """One AdaGrad step per row toward the expert's action (defer iff the stage was wrong)."""
        x = self.features(proba, lengths, extra)
        target = np.minimum(np.asarray(stage_wrong, dtype=np.float64) + self.calibration, 1.0)
        weight = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, float)
        for row in range(len(x)):
            p = 1.0 / (1.0 + np.exp(-np.clip(x[row] @ self.weights, -30, 30)))
            grad = weight[row] * (p - target[row]) * x[row]
            grad[1:] += self.l2 * self.weights[1:]
            self.grad_sq += grad * grad
            self.weights -= self.learning_rate * grad / (np.sqrt(self.grad_sq) + _EPS)
            self.n_updates += 1
            rate = 1.0 / min(self.n_updates, max(self.averaging, 1))
            self.mean_weights += rate * (self.weights - self.mean_weights)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "grad_sq": self.grad_sq, "mean_weights": self.mean_weights}

    def load_arrays(self, arrays: dict[str, np.ndarray], n_updates: int) -> None:
        weights, grad_sq, mean = arrays["weights"], arrays["grad_sq"], arrays["mean_weights"]
        for array in (weights, grad_sq, mean):
            if array.shape != (self.n_features,):
                raise ValueError(f"policy weights have shape {array.shape}, expected "
                                 f"({self.n_features},)")
        self.weights = weights.astype(np.float64)
        self.grad_sq = grad_sq.astype(np.float64)
        self.mean_weights = mean.astype(np.float64)
        self.n_updates = int(n_updates)


def stage_extras(stage: object, texts: Sequence[str]) -> np.ndarray | None:
    """The extra policy inputs a stage offers for ``texts`` (its ``familiarity``), if any."""
    familiarity = getattr(stage, "familiarity", None)
    return None if familiarity is None else np.asarray(familiarity(texts), dtype=np.float64)


def n_stage_extras(stage: object) -> int:
    """How many extra policy inputs a stage offers."""
    return 1 if callable(getattr(stage, "familiarity", None)) else 0
