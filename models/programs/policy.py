"""The routing policy of a program: one sub-policy per call site, learned from the final answer.

Each call site has a softmax policy over its module's backends,

    pi(a | x) = softmax((theta_a . x - lambda * c_a) / tau),

where ``x`` are cheap features of the event, ``c_a`` the backend's cost over the program's
dearest backend's, ``lambda`` the price of cost (kept by :class:`CostController` so that the
realised cost per event meets a budget) and ``tau`` a temperature. It is trained by REINFORCE with
an entropy bonus: every call of an event is credited with the event's return,

    R = u(final answer, ground truth) - lambda * (cost from this call on) / dearest cost,

so the sites of a program learn together from the final answer's ground truth only (structured
REINFORCE, as in Nie et al., *Resource-efficient Inference with Foundation Model Programs*).
Where this departs from the paper, and why:

- The cost enters the logits as well as the return. With the entropy bonus, the fixed point of
  the update is ``theta_a . x = E[R + lambda * c_a | x, a]`` up to a constant per event, which
  does not depend on ``lambda`` for a single site: a change of ``lambda`` moves the choices at
  once, without relearning, which is what lets a budget be held (a fixed penalty, as in the
  paper, cannot be turned into a spend).
- A learned baseline ``b(x) = v . x`` is subtracted from the return (the paper uses none).
- Exploration is Thompson sampling over ``theta``: each choice draws
  ``theta + nu * eps / sqrt(n)``, where ``n`` counts, per weight, the (squared) inputs the
  weight has been trained on, so an arm seldom tried in a region of the features is sampled
  widely there and one tried often is not (the paper scales noise by accumulated gradients,
  which shrink with the step size rather than with evidence). The gradient is taken at the
  probabilities the choice was drawn from, kept with the call, as the paper does: an
  importance ratio to the unperturbed policy would all but erase what exploration finds (an arm
  the mean policy deems unlikely gets a ratio near zero), and the ground truth, which arrives
  late, meets the choice as it was made.
- A small share of the draws (``floor``) is spread over the backends as a context-free draw at
  the current price would spread them: a sub-policy that has all but given up a backend still
  hears about it now and then, and can come back to it as the stages it competes with change.
- A step moves the value of the choice made (``theta_a . x``) by about the learning rate times
  the advantage, whatever the number and scale of the features (the gradient over
  ``1 + |x|^2``), so the temperature sets how sharp the policy is, not how fast it learns; the
  step shrinks with the updates (to a tenth), as the noise of single returns would otherwise
  keep the policy from settling.

:class:`Utility` is the per-event reward ``u``: correctness for accuracy; for the F1 of a class,
the marginal change of F1 that the event makes (a true positive +1, a false positive or a false
negative ``-F1 / (2 (1 - F1))`` at the running F1, a true negative 0), since F1 is not a sum over
events.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return np.asarray(e / e.sum())


class SitePolicy:
    """The sub-policy of one call site: ``len(costs)`` backends, ``n_features`` inputs.

    ``costs`` are the backends' costs over the program's dearest backend's (0..1).
    """

    def __init__(self, costs: np.ndarray, n_features: int) -> None:
        self.costs = np.asarray(costs, dtype=np.float64)
        n_arms = len(self.costs)
        self.theta = np.zeros((n_arms, n_features))
        #: Evidence per weight: 1 + the sum of squared inputs it was trained on.
        self.evidence = np.ones((n_arms, n_features))
        self.value = np.zeros(n_features)
        self.n_updates = 0

    @property
    def n_arms(self) -> int:
        return int(self.theta.shape[0])

    @property
    def n_params(self) -> int:
        """The weights a choice reads (its compute, in parameters)."""
        return int(self.theta.size)

    def probabilities(self, x: np.ndarray, lam: float, temperature: float,
                      theta: np.ndarray | None = None) -> np.ndarray:
        weights = self.theta if theta is None else theta
        return softmax((weights @ x - lam * self.costs) / temperature)

    def choose(self, x: np.ndarray, lam: float, temperature: float, exploration: float,
               floor: float, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """A backend drawn from the policy under Thompson-sampled weights (``exploration`` is
        the noise's scale), a ``floor`` share of the draws spread over the backends as a draw
        at the current price would spread them; and the probabilities it was drawn from."""
        theta = self.theta
        if exploration > 0:
            noise = rng.standard_normal(theta.shape) / np.sqrt(self.evidence)
            theta = theta + exploration * noise
        p = self.probabilities(x, lam, temperature, theta)
        if floor > 0:
            p = (1.0 - floor) * p + floor * softmax(-max(lam, 0.0) * self.costs)
        arm = int(rng.choice(self.n_arms, p=p))
        return arm, p

    def update(self, x: np.ndarray, arm: int, behaviour: np.ndarray, ret: float, *,
               temperature: float, learning_rate: float, learning_decay: float,
               baseline_rate: float) -> None:
        """One REINFORCE step for the choice ``arm`` at ``x``, drawn from the probabilities
        ``behaviour``, that earned ``ret``; with ``learning_rate`` 0 only the baseline learns.
        The step shrinks as ``1 / sqrt(1 + updates / learning_decay)``, to a tenth at most."""
        # The soft return: the entropy bonus of the choice.
        target = ret - temperature * math.log(max(float(behaviour[arm]), 1e-12))
        advantage = target - float(self.value @ x)
        self.value += baseline_rate * advantage * x / (1.0 + float(x @ x))
        if learning_rate <= 0:
            return
        step = learning_rate * max(0.1, 1.0 / math.sqrt(1.0 + self.n_updates / learning_decay))
        direction = -np.asarray(behaviour, dtype=np.float64)
        direction[arm] += 1.0
        # The score function's direction, scaled so that one step moves the choice's value
        # (theta_a . x) by about ``step * advantage`` whatever the features' scale: the
        # temperature and the features' norm only set how far a step moves the logits.
        self.theta += (step * advantage / (1.0 + float(x @ x))) * np.outer(direction, x)
        self.evidence[arm] += x * x
        self.n_updates += 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"theta": self.theta, "evidence": self.evidence, "value": self.value,
                "costs": self.costs}

    def load_arrays(self, arrays: dict[str, np.ndarray], n_updates: int) -> None:
        for key in ("theta", "evidence"):
            if arrays[key].shape != self.theta.shape:
                raise ValueError(f"policy array {key} has shape {arrays[key].shape}, "
                                 f"expected {self.theta.shape}")
        if arrays["value"].shape != self.value.shape:
            raise ValueError("policy baseline has the wrong shape")
        self.theta = arrays["theta"].astype(np.float64)
        self.evidence = arrays["evidence"].astype(np.float64)
        self.value = arrays["value"].astype(np.float64)
        self.n_updates = int(n_updates)


class CostController:
    """The price of cost, ``lambda``: fixed, or moved after every answered event so that the
    realised cost per event meets ``budget`` (an online Lagrange multiplier: dual ascent on
    ``E[cost] = budget``, with costs over ``reference``). The budget is a target: below ``floor``
    the price goes no lower (a negative price spends what is left where it buys the most).

    >>> c = CostController(budget=10.0, reference=100.0, rate=0.5, start=0.0)
    >>> c.observe(30.0); round(c.lam, 3)
    0.1
    >>> c.observe(0.0); round(c.lam, 3)
    0.05
    """

    def __init__(self, budget: float | None, reference: float, rate: float, start: float,
                 floor: float = -1.0) -> None:
        self.budget = budget
        self.reference = float(reference)
        self.rate = float(rate)
        self.lam = float(start)
        #: The lowest price (a negative one favours the dearer backends).
        self.floor = float(floor)

    def observe(self, cost: float) -> None:
        if self.budget is None:
            return
        self.lam = max(self.floor,
                       self.lam + self.rate * (cost - self.budget) / self.reference)


class Utility:
    """The reward of one final answer against its ground truth (see the module's docstring)."""

    def __init__(self, metric: str, positive: int | None, prior: float = 10.0,
                 decay: float = 0.999) -> None:
        self.metric = metric
        self.positive = positive
        self.decay = decay
        # Pseudo-counts for a running F1 of one half at the start.
        self.tp, self.fp, self.fn = prior, prior, prior

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    def __call__(self, predicted: int | None, truth: int) -> float:
        if self.metric != "f1" or self.positive is None:
            return 1.0 if predicted == truth else 0.0
        hit_pos, is_pos = predicted == self.positive, truth == self.positive
        if hit_pos and is_pos:
            return 1.0
        if hit_pos or is_pos:
            f1 = min(max(self.f1, 0.05), 0.95)
            return -f1 / (2 * (1 - f1))
        return 0.0

    def observe(self, predicted: int | None, truth: int) -> None:
        if self.metric != "f1" or self.positive is None:
            return
        self.tp, self.fp, self.fn = (self.tp * self.decay, self.fp * self.decay,
                                     self.fn * self.decay)
        if predicted == self.positive and truth == self.positive:
            self.tp += 1
        elif predicted == self.positive:
            self.fp += 1
        elif truth == self.positive:
            self.fn += 1

    def meta(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn}

    def load(self, meta: dict[str, Any]) -> None:
        self.tp, self.fp, self.fn = float(meta["tp"]), float(meta["fp"]), float(meta["fn"])
