"""The operating-point controller: turns a target a user understands into deferral thresholds.

Every non-final stage answers an event when its policy's estimate of P(wrong) is at most the
stage's threshold. Three ways to set the thresholds:

``mu``
    The paper's cost coefficient: answering costs its expected error, deferring costs ``mu`` times
    the next stage's price, so the threshold is ``mu * cost_next`` (fixed). A raw ``mu`` says
    nothing in the task's units: what quality it buys depends on the stream and on how well the
    policy is calibrated, so a small change of it can cost much quality. It is kept for
    comparison with the paper.
``llm_share``
    The share of events that reach the LLM (audit calls included): the smallest shared threshold
    whose share over the recent window of events is at most the target.
``quality_loss``
    The largest expected quality loss against the LLM, in the task metric's units (0.01 = one
    point): the largest shared threshold whose expected loss over the recent window is at most
    the target.

Events are ranked by their expected loss against the LLM if the stage answers,
``e = d * (w_other * (1 - q) - w_same * q)``, where ``d`` is the policy's probability that the
stage disagrees with the LLM (scaled by the realised-over-predicted ratio of audited early
answers, so an over-confident policy is corrected by what the audit sees), ``q`` the referee's
probability that the stage is the one that is right when they disagree, given the class it said
and how sure it was (learned from ground truth, see :mod:`.referee`; near 0, the cautious side,
without it), and the ``w`` how many metric points one error costs on an event of the stage's
predicted class or of another (1 for accuracy; for the F1 of a class they follow from the counts
of true and false positives, see :meth:`error_weights`). Without ground truth ``e`` bounds the
disagreement with the LLM; with it, ``e`` can be negative where the stage is likelier right than
the LLM.

The window holds the policies' *inputs* for recent events and re-scores them with the current
policies at each solve, so the thresholds follow the stream (a stage that improves answers more)
without lagging behind the policies' own learning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.referee import Referee

MODES = ("mu", "llm_share", "quality_loss")
_COUNTS = ("audit_predicted", "audit_realised", "n_truth", "tp", "fp", "fn")
#: A threshold no score is below: defer everything.
_DEFER_ALL = -1e9


class OperatingPointController:
    """Thresholds on P(wrong), one per non-final stage, steered toward a target.

    Parameters
    ----------
    policies, referees
        Each non-final stage's deferral policy and referee (read, never trained, here).
    mode, value
        The target (see the module's docstring).
    next_costs
        For ``mu``: the price of the stage after each stage (the LLM's for the last).
    audit_rate
        Share of early answers also sent to the LLM (counted in ``llm_share``).
    positive
        The index of the class whose F1 is the metric, or ``None`` for accuracy.
    window, every
        Number of recent events the thresholds are solved over, and how often (in events).
    """

    def __init__(self, policies: list[DeferralPolicy], referees: list[Referee],
                 mode: str, value: float,
                 next_costs: list[float], audit_rate: float = 0.0, positive: int | None = None,
                 window: int = 1000, every: int = 20) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown operating mode {mode!r}; expected one of {MODES}")
        self.policies = policies
        self.referees = referees
        n_stages = len(policies)
        self.n_stages = n_stages
        self.n_features = max((p.n_features for p in policies), default=0)
        self.mode = mode
        self.value = float(value)
        self.next_costs = [float(c) for c in next_costs]
        self.audit_rate = float(audit_rate)
        self.positive = positive
        self.window = int(window)
        self.every = int(every)
        self._x = np.full((self.window, n_stages, self.n_features), np.nan, dtype=np.float32)
        self._pos = np.full(self.window, np.nan)
        self._cursor = 0
        self._filled = 0
        self._since_solve = 0
        # Exponentially decayed evidence from expert labels (see the observe_* methods).
        self.counts = dict.fromkeys(_COUNTS, 0.0)
        if mode == "mu":
            self.thresholds = self._mu_thresholds()
        else:
            self.thresholds = np.full(n_stages, _DEFER_ALL)  # until there is evidence

    def _mu_thresholds(self) -> np.ndarray:
        return np.minimum(1.0, self.value * np.asarray(self.next_costs, float))

    # -- observations -----------------------------------------------------------------------------

    def observe(self, features: np.ndarray, positive_share: np.ndarray | None = None) -> None:
        """Record the policies' inputs ``(n, n_stages, n_features)`` for answered events (``nan``
        where a stage did not run)."""
        for row in range(len(features)):
            self._x[self._cursor] = features[row]
            if positive_share is not None:
                self._pos[self._cursor] = positive_share[row]
            self._cursor = (self._cursor + 1) % self.window
            self._filled = min(self._filled + 1, self.window)
        self._since_solve += len(features)
        if self.mode != "mu" and self._since_solve >= self.every:
            self._since_solve = 0
            self.thresholds = self._solve()

    def _add(self, decay: float, **amounts: float) -> None:
        """Decay the named counts (all of one kind of observation) and add the new amounts."""
        for key, amount in amounts.items():
            self.counts[key] = decay * self.counts[key] + amount

    def observe_audit(self, predicted: float, disagreed: bool) -> None:
        """An audited early answer: the predicted probability of disagreeing, and the outcome."""
        self._add(0.995, audit_predicted=float(predicted), audit_realised=float(disagreed))

    def observe_outcome(self, answer: int | None, truth: int) -> None:
        """Ground truth for any answered event: the counts behind the F1's sensitivity."""
        if self.positive is None:
            return
        said, true = answer == self.positive, truth == self.positive
        self._add(0.999, n_truth=1.0, tp=float(said and true), fp=float(said and not true),
                  fn=float(true and not said))

    @property
    def audit_ratio(self) -> float:
        """Realised over predicted errors of audited early answers, shrunk toward 1."""
        prior = 5.0
        c = self.counts
        ratio = (c["audit_realised"] + prior) / (c["audit_predicted"] + prior)
        return float(np.clip(ratio, 0.5, 4.0))

    def error_weights(self) -> tuple[float, float]:
        """Metric points (times N) lost by one error on a positive / on a negative event.

        For accuracy both are 1. For the F1 of the positive class, F1 = 2TP / D with
        D = 2TP + FP + FN; turning a right answer wrong costs 2(TP+FP+FN)/D² on a positive event
        and 2TP/D² on a negative one. Without ground truth the LLM stands for it (FP = FN = 0,
        TP = the positive share π), and both weights are 1/(2π).
        """
        if self.positive is None:
            return 1.0, 1.0
        c = self.counts
        if c["n_truth"] >= 50:
            t, f, g = (c[k] / c["n_truth"] for k in ("tp", "fp", "fn"))
            d = max(2 * t + f + g, 0.01)
            return 2 * (t + f + g) / d**2, 2 * t / d**2
        pos = self._pos[np.isfinite(self._pos)]
        share = max(float(pos.mean()) if pos.size else 0.5, 0.02)
        return 1.0 / (2 * share), 1.0 / (2 * share)

    # -- solving ----------------------------------------------------------------------------------

    def scores(self, j: int, features: np.ndarray) -> np.ndarray:
        """Expected loss against the LLM if stage ``j`` answers, for each row of its policy's
        inputs (with ``mu``: the policy's probability of disagreeing, as in the paper)."""
        policy = self.policies[j]
        d = policy.defer_proba_of(features)
        if self.mode == "mu":
            return d
        said = policy.predicted_class(features)
        q = self.referees[j].stage_right_proba(said, policy.top_proba(features))
        w_pos, w_neg = self.error_weights()
        if self.positive is None:
            w_same = w_other = np.full(len(d), w_pos)
        else:
            said_pos = said == self.positive
            w_same = np.where(said_pos, w_pos, w_neg)  # the stage is right: truth is its class
            w_other = np.where(said_pos, w_neg, w_pos)  # the LLM is right: truth is the other
        return np.asarray(self.audit_ratio * d * (w_other * (1 - q) - w_same * q))

    def _solve(self) -> np.ndarray:
        if self._filled < 50:
            return np.full(self.n_stages, _DEFER_ALL)
        x = self._x[: self._filled]
        e = np.full(x.shape[:2], np.nan)
        for j in range(self.n_stages):
            ran = np.isfinite(x[:, j, 0])
            if ran.any():
                width = self.policies[j].n_features
                e[ran, j] = self.scores(j, x[ran, j, :width].astype(np.float64))
        finite = e[np.isfinite(e)]
        candidates = np.unique(np.concatenate(
            [[_DEFER_ALL], np.quantile(finite, np.linspace(0, 1, 201))]))
        if self.n_stages == 1:
            return np.full(1, self._solve_one(e[:, 0], candidates))
        return np.full(self.n_stages, self._solve_stages(e, candidates))

    def _solve_stages(self, e: np.ndarray, candidates: np.ndarray) -> float:
        """The shared threshold among ``candidates`` for expected losses ``e`` ``(M, stages)``
        (``nan`` where a stage did not run)."""
        e_inf = np.where(np.isfinite(e), e, np.inf)
        # below[c, i, j]: stage j would answer event i under candidate threshold c.
        below = e_inf[None, :, :] <= candidates[:, None, None]
        # first[c, i, j]: below at stage j and at no stage before it (a running OR on bools is
        # cheaper than counting with cumsum, and this runs on the hot path).
        reached = np.logical_or.accumulate(below, axis=2)
        first = below.copy()
        first[:, :, 1:] &= ~reached[:, :, :-1]
        deferred = ~below.any(axis=2)  # (C, M)
        loss = (first * np.where(np.isfinite(e), e, 0.0)[None]).sum(axis=(1, 2)) / len(e)
        return self._pick(candidates, deferred.mean(axis=1), loss)

    def _solve_one(self, e: np.ndarray, candidates: np.ndarray) -> float:
        """:meth:`_solve_stages` for one stage, by sorting: the same answer without its (C, M)
        masks (this runs every ``every`` events on the operator's event loop)."""
        ranked = np.sort(e[np.isfinite(e)])
        answered = np.searchsorted(ranked, candidates, side="right")  # per candidate
        loss = np.concatenate([[0.0], np.cumsum(ranked)])[answered] / len(e)
        return self._pick(candidates, 1.0 - answered / len(e), loss)

    def _pick(self, candidates: np.ndarray, deferred: np.ndarray, loss: np.ndarray) -> float:
        """The threshold that meets the target, from each candidate's deferred share and loss."""
        if self.mode == "llm_share":
            calls = deferred + (1 - deferred) * self.audit_rate
            ok = np.flatnonzero(calls <= self.value)
            return float(candidates[ok[0]] if ok.size else candidates[-1])
        ok = np.flatnonzero(loss <= self.value)
        return float(candidates[ok[-1]] if ok.size else _DEFER_ALL)

    # -- state ------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {"cursor": self._cursor, "filled": self._filled, "since": self._since_solve,
                "counts": dict(self.counts), "mode": self.mode, "value": self.value,
                "thresholds": [float(t) for t in self.thresholds]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"window_x": self._x, "window_pos": self._pos}

    def load(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        x, pos = arrays["window_x"], arrays["window_pos"]
        if x.shape != self._x.shape or pos.shape != self._pos.shape:
            raise ValueError("controller window has another shape")
        cursor, filled, since = int(meta["cursor"]), int(meta["filled"]), int(meta["since"])
        if not (0 <= cursor < self.window and 0 <= filled <= self.window and since >= 0):
            raise ValueError(f"controller window position {cursor}/{filled} (since {since}) "
                             f"does not fit a window of {self.window}")
        counts = {key: float(meta["counts"][key]) for key in _COUNTS}
        if not all(np.isfinite(v) and v >= 0 for v in counts.values()):
            raise ValueError("controller counts must be finite and not negative")
        self._x, self._pos = x.astype(np.float32), pos.astype(np.float64)
        self._cursor, self._filled, self._since_solve = cursor, filled, since
        self.counts = counts
        # The thresholds serve the operating point they were solved for. A worker restarted with
        # another one (or from a state that does not name its point) must not keep them: ``mu``
        # is fixed by its value, the others are solved again over the loaded window.
        if self.mode == "mu":
            self.thresholds = self._mu_thresholds()
        elif (meta.get("mode"), meta.get("value")) == (self.mode, self.value):
            self.thresholds = np.asarray(meta["thresholds"],
                                         dtype=np.float64).reshape(self.n_stages)
        else:
            self.thresholds = self._solve()
