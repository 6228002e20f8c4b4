"""Training the first stage and its deferral policy from a history of labelled events.

The stage is the softmax regression of :mod:`.models` over the stage's own features, trained on
every event. Its deferral policy must learn how often the stage is wrong on events it has *not*
learned from, as online: so the events are split into folds, a stage is trained on all folds but
one and answers the one left out (its probabilities and familiarity, computed by the stage's own
code), and the policy, a logistic regression over the policy's own inputs, is trained on those
out-of-fold answers, the expert's action being *defer* where the stage's answer differs from the
label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamcascade.models.cascade import Cascade, CascadeConfig
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.relational import features as feat
from streamcascade.models.relational import models
from streamcascade.models.relational.driver import (
    Problem,
    RelationalTrainer,
    TrainResult,
    TrainSpec,
)
from streamcascade.models.relational.engines import Engine
from streamcascade.models.relational.history import LabelledEvent
from streamcascade.models.relational.publish import warm_cascade
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.tasks import Task

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainOptions:
    """How the stage is trained (``learning_rate``: the stage's own by default; ``l2``: a
    penalty on its weights, the bias spared), and its policy (``policy_*``); ``folds``: how many
    stages answer the events the policy learns from, each the ones it did not learn."""

    epochs: int = 6
    batch_size: int = 256
    learning_rate: float | None = None
    l2: float = 3e-5
    policy_epochs: int = 4
    policy_batch_size: int = 256
    folds: int = 2
    seed: int = 0
    stage_options: dict[str, Any] = field(default_factory=dict)
    config: CascadeConfig = field(default_factory=CascadeConfig)


@dataclass
class StageFit:
    stage: HashedTextStage
    result: TrainResult


@dataclass
class PolicyFit:
    policy: DeferralPolicy
    inputs: np.ndarray  # the policy's inputs for every event (out of fold)
    proba: np.ndarray  # the out-of-fold stage's probabilities
    result: TrainResult


def new_stage(task: Task, options: dict[str, Any]) -> HashedTextStage:
    stage = make_stage("hashed", task, **options)
    if not isinstance(stage, HashedTextStage):
        raise TypeError("the hashed stage is not a HashedTextStage")
    return stage


def fit_stage(engine: Engine, task: Task, texts: Sequence[str], labels: np.ndarray,
              options: TrainOptions, prefix: str = "s") -> StageFit:
    """A stage trained on ``texts``: IDF counted as learning them would, then the weights."""
    stage = new_stage(task, options.stage_options)
    freq = feat.document_frequencies(stage, texts)
    feat.set_idf(stage, freq, len(texts))
    x = feat.feature_relation(stage, texts)
    k = len(task.labels)
    domain = np.unique(x["f"])
    features = np.repeat(domain, k)
    weights = {"f": features, "c": np.tile(np.arange(k, dtype=np.int64), domain.size),
               "v": np.zeros(features.size),
               "decay": np.where(features == feat.BIAS, 0.0, options.l2)}
    y = {"e": np.arange(len(texts), dtype=np.int64), "c": labels.astype(np.int64)}
    spec = TrainSpec(options.epochs, options.batch_size,
                     options.learning_rate or stage.learning_rate, seed=options.seed)
    trainer = RelationalTrainer(engine, Problem(models.softmax_regression, len(texts), x, y,
                                                weights), spec, prefix)
    result = trainer.train()
    trainer.close()
    feat.stage_from_weights(stage, result.weights, freq, len(texts))
    return StageFit(stage, result)


def out_of_fold(engine: Engine, task: Task, texts: Sequence[str], labels: np.ndarray,
                options: TrainOptions,
                progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each event's stage probabilities and familiarity, from a stage that did not learn it."""
    n, k = len(texts), len(task.labels)
    fold = np.random.default_rng([options.seed, 7]).permutation(n) % max(options.folds, 2)
    proba, familiarity = np.zeros((n, k)), np.zeros((n, 1))
    for j in range(max(options.folds, 2)):
        inside, outside = np.flatnonzero(fold != j), np.flatnonzero(fold == j)
        if progress:
            progress(f"fold {j}: stage on {inside.size} events")
        fit = fit_stage(engine, task, [texts[i] for i in inside.tolist()], labels[inside], options,
                        prefix=f"s{j}")
        held = [texts[i] for i in outside.tolist()]
        proba[outside] = fit.stage.predict_proba(held)
        familiarity[outside] = fit.stage.familiarity(held)
    return proba, familiarity


def fit_policy(engine: Engine, task: Task, texts: Sequence[str], labels: np.ndarray,
               options: TrainOptions, progress: Progress | None = None) -> PolicyFit:
    """The first stage's deferral policy, trained on out-of-fold answers."""
    config = options.config
    proba, familiarity = out_of_fold(engine, task, texts, labels, options, progress)
    policy = DeferralPolicy(len(task.labels), config.policy_learning_rate,
                            calibration=config.calibration, n_extra=familiarity.shape[1])
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    inputs = policy.features(proba, lengths, familiarity)
    wrong = (proba.argmax(axis=1) != labels).astype(np.float64)
    n, d = inputs.shape
    x = {"e": np.repeat(np.arange(n, dtype=np.int64), d),
         "f": np.tile(np.arange(d, dtype=np.int64), n), "v": inputs.ravel()}
    y = {"e": np.arange(n, dtype=np.int64), "t": np.minimum(wrong + policy.calibration, 1.0)}
    # The online policy's L2 step: l2 * w, the intercept spared.
    weights = {"f": np.arange(d, dtype=np.int64), "v": np.zeros(d),
               "decay": np.where(np.arange(d) > 0, policy.l2, 0.0)}
    spec = TrainSpec(options.policy_epochs, options.policy_batch_size, policy.learning_rate,
                     seed=options.seed)
    if progress:
        progress(f"policy on {n} events")
    trainer = RelationalTrainer(engine, Problem(models.logistic_regression, n, x, y, weights),
                                spec, prefix="p")
    result = trainer.train()
    trainer.close()
    order = np.argsort(result.weights["f"])
    trained = result.weights["v"][order].astype(np.float64)
    policy.load_arrays({"weights": trained, "grad_sq": result.weights["g2"][order],
                        "mean_weights": trained.copy()}, n)
    return PolicyFit(policy, inputs, proba, result)


def train_from_history(engine: Engine, task: Task, events: Sequence[LabelledEvent],
                       options: TrainOptions, skipped: dict[str, int] | None = None,
                       progress: Progress | None = None) -> tuple[Cascade, dict[str, Any]]:
    """A warm cascade trained on ``events``, and the training's figures. Events without a
    feature the stage can read are counted under ``no_features`` in ``skipped`` and left out."""
    skipped = dict(skipped or {})
    readable = feat.n_features_of(new_stage(task, options.stage_options),
                                  [e.text for e in events]) > 0
    skipped["no_features"] = skipped.get("no_features", 0) + int((~readable).sum())
    used = [e for e, ok in zip(events, readable, strict=True) if ok]
    if len(used) < 2 * max(options.folds, 2):
        raise ConfigurationError(f"{len(used)} usable events are too few to train from")
    texts = [e.text for e in used]
    labels = np.array([e.label for e in used], dtype=np.int64)
    start = time.perf_counter()
    if progress:
        progress(f"stage on {len(used)} events")
    stage = fit_stage(engine, task, texts, labels, options)
    policy = fit_policy(engine, task, texts, labels, options, progress)
    cascade = warm_cascade(task, stage.stage, policy.policy, policy.inputs, policy.proba,
                           len(used), options.config, options.stage_options)
    figures = {
        "engine": engine.name, "rows": len(used), "skipped": skipped,
        "label_counts": np.bincount(labels, minlength=len(task.labels)).tolist(),
        "stage": _figures(stage.result, options.epochs, options.batch_size),
        "policy": _figures(policy.result, options.policy_epochs, options.policy_batch_size)
        | {"out_of_fold_accuracy": float((policy.proba.argmax(axis=1) == labels).mean()),
           "folds": max(options.folds, 2)},
        "loss": stage.result.loss, "seconds": time.perf_counter() - start,
    }
    return cascade, figures


def _figures(result: TrainResult, epochs: int, batch_size: int) -> dict[str, Any]:
    return {"loss": result.loss, "epoch_losses": result.epoch_losses, "epochs": epochs,
            "batch_size": batch_size, "steps": result.steps, "seconds": result.seconds,
            "step_seconds": result.step_seconds}
