"""A stage that is one of River's own estimators: any classifier or pipeline, named by a spec.

``--stage-option river.model="feature_extraction.TFIDF | naive_bayes.MultinomialNB"`` picks the
estimator (see :mod:`~streamcascade.models.stages.river_spec` for the spec's grammar). A spec that
does not start with a text vectoriser from ``feature_extraction`` gets ``TFIDF`` in front, so a
bare classifier (``tree.HoeffdingAdaptiveTreeClassifier``) learns from words. The default,
:data:`DEFAULT_MODEL`, is TF-IDF into one AdaGrad logistic regression per label: it handles any
number of labels, and it was the fastest and most accurate of the River linear and naive Bayes
text pipelines tried on the project's streams.

Classifiers that know only two classes (``linear_model.LogisticRegression``) are given
``False``/``True`` on a two-label task and refused on more labels (wrap them in
``multiclass.OneVsRestClassifier``); the others are given the label names. Answers are
probabilities over the task's labels in the task's order: a class the estimator never saw gets
zero, the rest is renormalised, and a stage that has learned nothing answers uniformly.

``mini_batch=True`` hands batches to River's ``learn_many``/``predict_proba_many`` where every
step of the pipeline has them (naive Bayes, one-vs-rest, the text vectorisers; otherwise texts go
one by one). They take pandas frames, so pandas must be installed. It is off by default: over
text, River builds a sparse frame column by column, which costs more than answering one text at
a time saves.

The state is the estimator itself, written by :mod:`~streamcascade.models.stages.river_state`
(data only, never pickle) beside the spec it was built from; state of another spec or other labels
is refused.

>>> from streamcascade.models.types import LabelSet
>>> stage = RiverStage(LabelSet(("neg", "pos")))
>>> stage.predict_proba(["great film"]).tolist()
[[0.5, 0.5]]
>>> for _ in range(5):
...     stage.learn(["great film", "awful film"], [1, 0])
>>> int(stage.predict_proba(["great acting"]).argmax())
1
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamcascade.models.costs import cost_of_parameters
from streamcascade.models.errors import ConfigurationError, ModelStateError
from streamcascade.models.stages.base import Stage, check_targets
from streamcascade.models.stages.river_spec import build_model, normalise_spec
from streamcascade.models.stages.river_state import decode, encode
from streamcascade.models.state import expect, pack_state, unpack_state
from streamcascade.models.types import LabelSet

DEFAULT_MODEL = ("feature_extraction.TFIDF | multiclass.OneVsRestClassifier("
                 "linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.5)))")

#: The default price: a linear model over a vocabulary as wide as the hashed stage's.
_DEFAULT_WIDTH = 2**20


class RiverStage(Stage):
    """One of River's classifiers (or a pipeline ending in one) as a cascade stage.

    Parameters
    ----------
    labels
        The task's labels (two or more).
    name
        The stage's name in decisions and state.
    model
        The estimator's spec, e.g. ``"feature_extraction.TFIDF | naive_bayes.ComplementNB"``.
    mini_batch
        Use River's ``learn_many``/``predict_proba_many`` (pandas) for batches of two or more,
        where the estimator has them.
    cost
        Price per event in paper units; by default that of a linear model over 2**20 features.
    """

    batch_invariant = True

    def __init__(self, labels: LabelSet, name: str = "river", model: str = DEFAULT_MODEL,
                 mini_batch: bool = False, cost: float | None = None) -> None:
        from river import base, compose, feature_extraction

        if not isinstance(model, str):
            raise ConfigurationError(f"the River model is a spec string, got {model!r}")
        self.labels = labels
        self.name = name
        self.spec = normalise_spec(model)
        estimator = build_model(self.spec)
        steps = list(estimator.steps.values()) if isinstance(estimator, compose.Pipeline) else [
            estimator]
        if not isinstance(steps[0], feature_extraction.BagOfWords):
            estimator = feature_extraction.TFIDF() | estimator
        if not isinstance(steps[-1], base.Classifier):
            raise ConfigurationError(f"River model {self.spec!r} does not end in a classifier")
        self.binary_only = not estimator._multiclass
        if self.binary_only and len(labels) > 2:
            raise ConfigurationError(
                f"{type(steps[-1]).__name__} tells two classes apart and this task has "
                f"{len(labels)}: wrap it, e.g. multiclass.OneVsRestClassifier(...)")
        # What River is taught for label j, and the column of each class River answers with
        # (mini-batch frames name their columns with strings).
        self._classes: list[Any] = [False, True] if self.binary_only else list(labels.names)
        self._column = {c: j for j, c in enumerate(self._classes)} | {
            str(c): j for j, c in enumerate(self._classes)}
        # River's mini-batch methods, where every step of the pipeline has them.
        self.mini_batch = bool(mini_batch) and _offers_mini_batch(estimator)
        if self.mini_batch:
            try:
                import pandas  # noqa: F401
            except ImportError:
                raise ConfigurationError(
                    "mini_batch needs pandas: pip install 'streamcascade[river-batch]'") from None
        k = len(labels)
        self.cost = (float(cost) if cost is not None
                     else cost_of_parameters(_DEFAULT_WIDTH * k + k))
        self.model = estimator
        self.n_docs = 0  # labelled texts learned from; learned state
        try:  # a model whose state cannot be written is refused now, not at its first snapshot
            encode(self.model)
        except ModelStateError as exc:
            raise ConfigurationError(f"River model {self.spec!r}: {exc}") from None
        # Counters for throughput reports; not learned state.
        self.predict_seconds = 0.0
        self.learn_seconds = 0.0
        self.n_predicted = 0
        self.n_learned = 0

    # -- the Stage contract -----------------------------------------------------------------------

    def predict_proba(self, texts: Sequence[str],
                      upstream: np.ndarray | None = None) -> np.ndarray:
        # ``upstream`` is not used: the estimator sees the text alone.
        start = time.perf_counter()
        out = np.zeros((len(texts), len(self.labels)))
        if self.n_docs and len(texts):
            if self.mini_batch and len(texts) > 1:
                self._predict_many(texts, out)
            else:
                for row, text in enumerate(texts):
                    for cls, p in self.model.predict_proba_one(text).items():
                        column = self._column.get(cls)
                        if column is not None:
                            out[row, column] = p
        out = np.where(np.isfinite(out) & (out > 0), out, 0.0)
        total = out.sum(axis=1, keepdims=True)
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / len(self.labels))
        self.predict_seconds += time.perf_counter() - start
        self.n_predicted += len(texts)
        return out

    def _predict_many(self, texts: Sequence[str], out: np.ndarray) -> None:
        import pandas as pd

        frame = self.model.predict_proba_many(pd.Series(list(texts)))
        for cls in frame.columns:
            column = self._column.get(cls)
            if column is not None:
                out[:, column] = frame[cls].to_numpy(dtype=np.float64, na_value=0.0)

    def learn(self, texts: Sequence[str], targets: Sequence[int],
              upstream: np.ndarray | None = None) -> None:
        check_targets(texts, targets, self.labels)
        start = time.perf_counter()
        classes = [self._classes[int(t)] for t in targets]
        if self.mini_batch and len(texts) > 1:
            import pandas as pd

            self.model.learn_many(pd.Series(list(texts)), pd.Series(classes))
        else:
            for text, cls in zip(texts, classes, strict=True):
                self.model.learn_one(text, cls)
        self.n_docs += len(texts)
        self.learn_seconds += time.perf_counter() - start
        self.n_learned += len(texts)

    # -- state ------------------------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        return {"kind": "river", "model": self.spec, "labels": list(self.labels.names)}

    def state_bytes(self) -> bytes:
        tree, arrays = encode(self.model)
        return pack_state({**self._config(), "n_docs": self.n_docs, "estimator": tree}, arrays)

    def load_state(self, data: bytes) -> None:
        try:
            meta, arrays = unpack_state(data)
        except RecursionError:
            raise ModelStateError("river stage state is nested too deeply") from None
        for key, value in self._config().items():
            expect(meta, key, value)
        n_docs = meta.get("n_docs")
        if not isinstance(n_docs, int) or n_docs < 0:
            raise ModelStateError(f"river stage state has n_docs={n_docs!r}")
        model = decode(meta.get("estimator"), arrays)
        if type(model) is not type(self.model) or not _same_steps(model, self.model):
            raise ModelStateError("river stage state holds another kind of estimator than "
                                  f"{self.spec!r}")
        self.model, self.n_docs = model, n_docs

    def __repr__(self) -> str:
        return (f"RiverStage(name={self.name!r}, model={self.spec!r}, "
                f"labels={list(self.labels.names)})")


def _offers_mini_batch(pipeline: Any) -> bool:
    """Whether every step has River's mini-batch methods (transformers, then a classifier)."""
    *transformers, classifier = pipeline.steps.values()
    ready = all(hasattr(t, "learn_many") and hasattr(t, "transform_many") for t in transformers)
    return ready and all(hasattr(classifier, m) for m in ("learn_many", "predict_proba_many"))


def _same_steps(a: Any, b: Any) -> bool:
    """Whether two pipelines have steps of the same classes, in the same order."""
    steps_a, steps_b = getattr(a, "steps", {}), getattr(b, "steps", {})
    return [type(s) for s in steps_a.values()] == [type(s) for s in steps_b.values()]
