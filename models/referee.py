"""The referee: when a stage and the LLM disagree, how often is the stage the one that is right?

Only ground truth can tell (the LLM's own answers cannot judge the LLM), and ground truth is
scarce: a labelling team may send a tenth of the events, and the stage disagrees with the LLM on
few of those. So the referee is deliberately simple: per class the stage said, decayed counts of
judged disagreements and of those the stage won, shrunk toward "the LLM is right" by ``prior``
pseudo-observations. The class matters most: on HateSpeech the stage is right on most of its
"no hate" disagreements (the LLM over-flags) and on almost none of its "hate" ones, and a single
model over the policy's inputs, fitted on a few hundred such events, was seen to blur the two
into one rate and let wrong early "hate" answers through.

>>> import numpy as np
>>> referee = Referee(n_classes=2, prior=10.0)
>>> referee.learn(np.array([0] * 90 + [1] * 90), np.array([True] * 80 + [False] * 10
...                                                        + [False] * 85 + [True] * 5))
>>> referee.stage_right_proba(np.array([0, 1])).round(2).tolist()  # counts decay by 0.999 each
[0.79, 0.05]
"""

from __future__ import annotations

import numpy as np


class Referee:
    """P(stage right | stage and LLM disagree, class the stage said), from ground truth.

    Parameters
    ----------
    n_classes
        Number of the task's classes.
    prior
        Pseudo-observations of "the LLM was right" per class: with few judged disagreements the
        estimate stays near 0, the cautious side (early answers are not credited with beating
        the LLM until the evidence says so).
    decay
        Each update multiplies the counts of the classes it touches by this, so the estimate
        follows a drifting stream (about ``1 / (1 - decay)`` recent judgements count).
    """

    def __init__(self, n_classes: int, prior: float = 20.0, decay: float = 0.999) -> None:
        self.n_classes = int(n_classes)
        self.prior = float(prior)
        self.decay = float(decay)
        self.judged = np.zeros(self.n_classes, dtype=np.float64)
        self.stage_won = np.zeros(self.n_classes, dtype=np.float64)
        self.n_updates = 0

    def stage_right_proba(self, predicted: np.ndarray) -> np.ndarray:
        """For each class the stage said, the estimated probability that the stage is right."""
        predicted = np.asarray(predicted, dtype=np.int64)
        return np.asarray(self.stage_won[predicted] / (self.judged[predicted] + self.prior))

    def learn(self, predicted: np.ndarray, stage_right: np.ndarray,
              sample_weight: np.ndarray | None = None) -> None:
        """Judged disagreements: the class the stage said, and whether the truth agreed."""
        predicted = np.asarray(predicted, dtype=np.int64)
        right = np.asarray(stage_right, dtype=np.float64)
        weight = np.ones(len(predicted)) if sample_weight is None else np.asarray(sample_weight,
                                                                                 float)
        for cls, won, w in zip(predicted.tolist(), right.tolist(), weight.tolist(), strict=True):
            self.judged[cls] = self.decay * self.judged[cls] + w
            self.stage_won[cls] = self.decay * self.stage_won[cls] + w * won
            self.n_updates += 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"judged": self.judged, "stage_won": self.stage_won}

    def load_arrays(self, arrays: dict[str, np.ndarray], n_updates: int) -> None:
        judged, won = arrays["judged"], arrays["stage_won"]
        for array in (judged, won):
            if array.shape != (self.n_classes,):
                raise ValueError(f"referee counts have shape {array.shape}, expected "
                                 f"({self.n_classes},)")
        if np.any(won > judged + 1e-9) or np.any(judged < 0) or np.any(won < 0):
            raise ValueError("referee counts are inconsistent")
        self.judged = judged.astype(np.float64)
        self.stage_won = won.astype(np.float64)
        self.n_updates = int(n_updates)
