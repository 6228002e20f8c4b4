"""The training loop: mini-batches, AdaGrad with its state as columns, one statement per step.

A parameter relation ``W(keys..., v, g2, decay)`` holds each weight, AdaGrad's sum of its squared
gradients and its L2 factor. A step is one query: the batch's forward pass, the backward pass
derived from it (:mod:`.autodiff`), and the update ``g = grad + decay * v; g2 += g^2;
v -= lr * g / (sqrt(g2) + eps)`` (the online stage's and policy's rule, their L2 step included)
joined onto every weight, written as the next parameter relation. The penalty's gradient is
``decay * v``, known without a query, so it is added there rather than derived. Batches are
numbered per epoch by a seeded permutation, so two engines given the same seed take the same
steps; nothing is recursive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamcascade.models.relational.autodiff import gradients
from streamcascade.models.relational.engines import Columns, Engine
from streamcascade.models.relational.ir import Rel, Table, literal
from streamcascade.models.relational.models import Tables
from streamcascade.models.relational.sql import lower, select, with_clause

ModelBuilder = Callable[[Tables], tuple[Rel, Table]]


@dataclass
class Problem:
    """A model and its data. Events are numbered ``0..n_events - 1``; ``x`` holds ``e, f, v``;
    ``y`` the label columns the model reads (with ``e``); ``weights`` the initial parameter
    relation: its keys, ``v``, and optionally ``decay`` (each weight's L2 factor)."""

    build: ModelBuilder
    n_events: int
    x: Columns
    y: Columns
    weights: Columns

    @property
    def param_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.weights if k not in ("v", "g2", "decay"))


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 0.4
    eps: float = 1e-6
    seed: int = 0


@dataclass
class TrainResult:
    weights: Columns
    loss: float
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0


class RelationalTrainer:
    """Trains ``problem`` on ``engine``; tables are named ``<prefix>_...``."""

    def __init__(self, engine: Engine, problem: Problem, spec: TrainSpec,
                 prefix: str = "m") -> None:
        if spec.batch_size < 1 or spec.epochs < 0 or spec.learning_rate <= 0:
            raise ValueError(f"bad training settings: {spec}")
        self.engine, self.problem, self.spec, self.prefix = engine, problem, spec, prefix
        self.parity = 0
        self.steps = 0
        p = prefix
        engine.put(f"{p}_x_all", problem.x)
        engine.put(f"{p}_y_all", problem.y)
        engine.put(f"{p}_full", {"e": np.arange(problem.n_events, dtype=np.int64),
                                 "wt": np.full(problem.n_events, 1.0 / problem.n_events)})
        engine.materialize(f"{p}_y_full", f"SELECT y.*, u.wt FROM {p}_y_all y "
                                          f"JOIN {p}_full u ON y.e = u.e")
        self.set_weights(problem.weights)
        self._step = [self._step_query(parity) for parity in (0, 1)]

    def _tables(self, weights: str, batch: bool) -> Tables:
        p = self.prefix
        if batch:
            return Tables(f"{p}_x_ep", f"{p}_y_ep", weights, where="b = $batch")
        return Tables(f"{p}_x_all", f"{p}_y_full", weights)

    def _step_query(self, parity: int) -> str:
        current = f"{self.prefix}_w{parity}"
        loss, w = self.problem.build(self._tables(current, batch=True))
        grad = gradients(loss, [w])[w]
        if grad is None:
            raise ValueError("the loss does not depend on the parameters")
        ctes, names = lower({"grad": grad})
        keys = self.problem.param_keys
        on = " AND ".join(f"p.{k} = g.{k}" for k in keys)
        lr, eps = literal(self.spec.learning_rate), literal(self.spec.eps)
        step = (f"SELECT {', '.join(f'p.{k}' for k in keys)}, p.v, p.g2, p.decay, "
                f"COALESCE(g.v, 0) + p.decay * p.v AS g "
                f"FROM {current} p LEFT JOIN {names['grad']} g ON {on}")
        update = (f"SELECT {', '.join(keys)}, v - {lr} * g / (SQRT(g2 + g * g) + {eps}) AS v, "
                  f"g2 + g * g AS g2, decay FROM ({step}) s")
        return f"{with_clause(ctes)}\n{update}"

    @property
    def weights_table(self) -> str:
        return f"{self.prefix}_w{self.parity}"

    def set_weights(self, weights: Columns) -> None:
        """Replace the parameters (and restart AdaGrad's sums unless ``g2`` is given)."""
        columns = dict(weights)
        columns.setdefault("g2", np.zeros(len(columns["v"])))
        columns.setdefault("decay", np.zeros(len(columns["v"])))
        self.engine.put(self.weights_table, columns)

    def weights(self) -> Columns:
        keys = ", ".join(self.problem.param_keys)
        return self.engine.fetch(f"SELECT * FROM {self.weights_table} ORDER BY {keys}")

    def loss(self) -> float:
        """The loss over every event (each weighted one over their number)."""
        rel, _ = self.problem.build(self._tables(self.weights_table, batch=False))
        return float(self.engine.fetch(select(rel))["v"][0])

    def gradient(self) -> Columns:
        """The loss's gradient over every event, as the derived backward pass computes it."""
        rel, w = self.problem.build(self._tables(self.weights_table, batch=False))
        grad = gradients(rel, [w])[w]
        assert grad is not None
        return self.engine.fetch(select(grad))

    def epoch(self, index: int) -> None:
        """One pass over the events in mini-batches, in a seeded order."""
        for b in range(self.begin_epoch(index)):
            self.step(b)

    def begin_epoch(self, index: int) -> int:
        """Number the events' batches for epoch ``index``; the number of batches."""
        n, size, p = self.problem.n_events, self.spec.batch_size, self.prefix
        order = np.random.default_rng([self.spec.seed, index]).permutation(n)
        batch = np.empty(n, dtype=np.int64)
        batch[order] = np.arange(n) // size
        counts = np.bincount(batch)
        self.engine.put(f"{p}_batch", {"e": np.arange(n, dtype=np.int64), "b": batch,
                                       "wt": 1.0 / counts[batch]})
        self.engine.materialize(f"{p}_x_ep", f"SELECT u.b, x.* FROM {p}_x_all x "
                                             f"JOIN {p}_batch u ON x.e = u.e ORDER BY u.b")
        self.engine.materialize(f"{p}_y_ep", f"SELECT u.b, u.wt, y.* FROM {p}_y_all y "
                                             f"JOIN {p}_batch u ON y.e = u.e")
        return len(counts)

    def step(self, batch: int) -> None:
        nxt = 1 - self.parity
        self.engine.materialize(f"{self.prefix}_w{nxt}", self._step[self.parity],
                                {"batch": int(batch)})
        self.parity = nxt
        self.steps += 1

    def close(self) -> None:
        """Drop this trainer's tables."""
        for part in ("x_all", "y_all", "full", "y_full", "batch", "x_ep", "y_ep", "w0", "w1"):
            self.engine.drop(f"{self.prefix}_{part}")

    def train(self, track_loss: bool = True,
              on_epoch: Callable[[int, float | None], Any] | None = None) -> TrainResult:
        start = time.perf_counter()
        losses, step_time = [], 0.0
        for index in range(self.spec.epochs):
            begin = time.perf_counter()
            self.epoch(index)
            step_time += time.perf_counter() - begin
            loss = self.loss() if track_loss else None
            if loss is not None:
                losses.append(loss)
            if on_epoch is not None:
                on_epoch(index, loss)
        final = losses[-1] if losses else self.loss()
        return TrainResult(self.weights(), final, losses, self.steps,
                           time.perf_counter() - start, step_time)
