"""The referee: when a stage and the LLM disagree, how often is the stage the one that is right?

Only ground truth can tell (the LLM's own answers cannot judge the LLM), and ground truth is
scarce: a labelling team may send a tenth of the events, and the stage disagrees with the LLM on
few of those. So the referee is deliberately simple: decayed counts of judged disagreements and
of those the stage won, per class the stage said, shrunk toward "the LLM is right" by ``prior``
pseudo-observations. The class matters most: an LLM that over-flags one class is often wrong
when it says that class against the stage, and seldom when it says another, so who wins a
disagreement depends first on the class the stage said. One rate for all classes, or one model
over all of the policy's inputs fitted on the few judged disagreements there are, blurs the
classes together and credits the stage where the LLM is in fact right.

The stage's confidence matters next. Judged disagreements come mostly from deferred events (the
LLM is asked only there, and on audits), which are the ones the stage is least sure of, and a
stage is right more often where it is sure. A single rate per class therefore under-credits the
sure answers, the very ones the stage gives early. So each class's counts are also kept per
confidence bin, and a bin's estimate is shrunk (by ``bin_prior`` pseudo-observations) toward the
estimate of the less sure bin below it, the least sure bin's toward the class's: a bin with
little evidence says what the answers just less sure than it say.

>>> import numpy as np
>>> referee = Referee(n_classes=2, prior=10.0)
>>> referee.learn(np.array([0] * 90 + [1] * 90), np.array([True] * 80 + [False] * 10
...                                                        + [False] * 85 + [True] * 5))
>>> referee.stage_right_proba(np.array([0, 1])).round(2).tolist()  # counts decay by 0.999 each
[0.79, 0.05]
"""

from __future__ import annotations

import numpy as np

#: Edges of the confidence bins, on the stage's top probability rescaled from chance (0) to
#: certainty (1): for two classes, top probabilities 0.7, 0.85, 0.95 and 0.98.
CONFIDENCE_EDGES = (0.4, 0.7, 0.9, 0.96)


class Referee:
    """P(stage right | stage and LLM disagree, class the stage said, its confidence), from
    ground truth.

    Parameters
    ----------
    n_classes
        Number of the task's classes.
    prior
        Pseudo-observations of "the LLM was right" per class: with few judged disagreements the
        estimate stays near 0, the cautious side (early answers are not credited with beating
        the LLM until the evidence says so).
    bin_prior
        Pseudo-observations, in each confidence bin, of the rate of the bin below it: the
        evidence a bin needs before its own record counts as much as what the less sure answers
        say. Sure answers are rarely judged (the LLM sees few of them), so a few lucky
        judgements could credit a whole bin with beating the LLM and let its wrong answers
        through unchecked. A large prior errs on the safe side: it costs LLM calls (a bin is
        credited late), where a small one costs quality.
    decay
        Each update multiplies the counts it touches (its class's, and its bin's) by this, so
        the estimate follows a drifting stream (about ``1 / (1 - decay)`` recent judgements
        count).
    """

    def __init__(self, n_classes: int, prior: float = 20.0, bin_prior: float = 30.0,
                 decay: float = 0.999) -> None:
        self.n_classes = int(n_classes)
        self.prior = float(prior)
        self.bin_prior = float(bin_prior)
        self.decay = float(decay)
        self.judged = np.zeros(self.n_classes, dtype=np.float64)
        self.stage_won = np.zeros(self.n_classes, dtype=np.float64)
        n_bins = len(CONFIDENCE_EDGES) + 1
        self.judged_bins = np.zeros((self.n_classes, n_bins), dtype=np.float64)
        self.stage_won_bins = np.zeros((self.n_classes, n_bins), dtype=np.float64)
        self.n_updates = 0
        # The bins' estimates, derived from the counts: asked for on every answered batch, they
        # change only when the counts do, so they are computed once per change.
        self._bin_rates: np.ndarray | None = None

    def _bins(self, top: np.ndarray) -> np.ndarray:
        chance = 1.0 / self.n_classes
        sureness = (np.asarray(top, dtype=np.float64) - chance) / (1.0 - chance)
        return np.searchsorted(CONFIDENCE_EDGES, sureness, side="right")

    def stage_right_proba(self, predicted: np.ndarray, top: np.ndarray | None = None
                          ) -> np.ndarray:
        """For each class the stage said (and, when given, its top probability), the estimated
        probability that the stage is right."""
        predicted = np.asarray(predicted, dtype=np.int64)
        if top is None:
            return np.asarray(self._class_rates()[predicted])
        if self._bin_rates is None:
            self._bin_rates = self._rates_by_bin()
        return np.asarray(self._bin_rates[predicted, self._bins(top)])

    def _class_rates(self) -> np.ndarray:
        return self.stage_won / (self.judged + self.prior)

    def _rates_by_bin(self) -> np.ndarray:
        # Bin by bin from the least sure, each shrunk toward the one below it (the class's rate
        # for the first): a surer answer is at least as often right, so a bin with little
        # evidence is credited like the less sure answers below it.
        rates = np.empty_like(self.judged_bins)
        below = self._class_rates()
        for b in range(rates.shape[1]):
            below = (self.stage_won_bins[:, b] + self.bin_prior * below) / (
                self.judged_bins[:, b] + self.bin_prior)
            rates[:, b] = below
        return rates

    def learn(self, predicted: np.ndarray, stage_right: np.ndarray,
              sample_weight: np.ndarray | None = None, top: np.ndarray | None = None) -> None:
        """Judged disagreements: the class the stage said, whether the truth agreed, and (for
        the confidence bins) the stage's top probability."""
        predicted = np.asarray(predicted, dtype=np.int64)
        right = np.asarray(stage_right, dtype=np.float64)
        weight = np.ones(len(predicted)) if sample_weight is None else np.asarray(sample_weight,
                                                                                 float)
        bins = None if top is None else self._bins(top).tolist()
        self._bin_rates = None
        for i, (cls, won, w) in enumerate(zip(predicted.tolist(), right.tolist(),
                                              weight.tolist(), strict=True)):
            self.judged[cls] = self.decay * self.judged[cls] + w
            self.stage_won[cls] = self.decay * self.stage_won[cls] + w * won
            if bins is not None:
                b = bins[i]
                self.judged_bins[cls, b] = self.decay * self.judged_bins[cls, b] + w
                self.stage_won_bins[cls, b] = self.decay * self.stage_won_bins[cls, b] + w * won
            self.n_updates += 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"judged": self.judged, "stage_won": self.stage_won,
                "judged_bins": self.judged_bins, "stage_won_bins": self.stage_won_bins}

    def load_arrays(self, arrays: dict[str, np.ndarray], n_updates: int) -> None:
        """Counts from :meth:`arrays`. A state of the older format has no confidence bins;
        its bins start empty and say what their class says."""
        empty = np.zeros_like(self.judged_bins)
        loaded = {"judged": arrays["judged"], "stage_won": arrays["stage_won"],
                  "judged_bins": arrays.get("judged_bins", empty),
                  "stage_won_bins": arrays.get("stage_won_bins", empty)}
        for key, array in loaded.items():
            expected = getattr(self, key).shape
            if array.shape != expected:
                raise ValueError(f"referee counts {key} have shape {array.shape}, expected "
                                 f"{expected}")
        for judged, won in ((loaded["judged"], loaded["stage_won"]),
                            (loaded["judged_bins"], loaded["stage_won_bins"])):
            if np.any(won > judged + 1e-9) or np.any(judged < 0) or np.any(won < 0):
                raise ValueError("referee counts are inconsistent")
        for key, array in loaded.items():
            setattr(self, key, array.astype(np.float64))
        self.n_updates = int(n_updates)
        self._bin_rates = None
