"""The contract every non-final cascade stage keeps, and nothing more.

A stage answers a batch of texts with class probabilities, learns from a batch of labels, states
its cost per event, and turns its learned state into bytes and back. A stage after the first is
also handed the previous stage's probabilities for the same texts (``upstream``): it may use them
as inputs (stacking, as the ONNX stage does), so that it builds on what the cheaper stage knows
instead of starting over; the cascade and the learner pass them, a stage is free to ignore them.

Its configuration (which encoder file, which hashing width) comes from its constructor;
``state_bytes`` carries only what it learned, in a data-only format (never pickle), so state read
from a Kafka topic is safe to load.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from streamcascade.models.types import LabelSet


class Stage(abc.ABC):
    """A model of the cascade that is cheaper than the LLM and learns online."""

    #: A short unique name, used in decisions, metrics and state.
    name: str
    #: The task's labels; column ``j`` of :meth:`predict_proba` is ``labels.names[j]``.
    labels: LabelSet
    #: Cost of answering one event, in the paper's units (parameters relative to BERT-base).
    cost: float
    #: Whether the answer for a text is the same, to rounding, whether it is asked alone or in a
    #: batch. A stage whose answers depend on their batch mates leaves this False (the contract
    #: suite, ``tests/unit/test_stage_contract.py``, checks the promise where it is made).
    batch_invariant: bool = False

    @abc.abstractmethod
    def predict_proba(self, texts: Sequence[str],
                      upstream: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``, rows summing to one.

        ``upstream``: the previous stage's probabilities for ``texts`` (``None`` for the first
        stage). Must not change any state: predicting never learns.
        """

    @abc.abstractmethod
    def learn(self, texts: Sequence[str], targets: Sequence[int],
              upstream: np.ndarray | None = None) -> None:
        """Update the stage on labelled texts (``targets`` are label indices); ``upstream`` as
        in :meth:`predict_proba`, as it was when the texts were answered."""

    @abc.abstractmethod
    def state_bytes(self) -> bytes:
        """The learned state in a data-only format."""

    @abc.abstractmethod
    def load_state(self, data: bytes) -> None:
        """Replace the learned state with that of a like-configured stage's :meth:`state_bytes`."""


#: Upstream probabilities are clipped here before their log is taken.
LOG_FLOOR = 1e-6


def check_targets(texts: Sequence[str], targets: Sequence[int], labels: LabelSet) -> None:
    """Refuse a batch whose targets do not pair with its texts or are not label indices."""
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts for {len(targets)} targets")
    for target in targets:
        if not 0 <= int(target) < len(labels):
            raise ValueError(f"target {target} is not a label index of {list(labels.names)}")


def upstream_logs(upstream: np.ndarray | None, n: int, k: int) -> np.ndarray:
    """The previous stage's probabilities of ``n`` texts over ``k`` labels as centred
    log-probabilities, a stacking stage's extra inputs (zeros where there is no upstream stage)."""
    if upstream is None:
        return np.zeros((n, k))
    upstream = np.asarray(upstream, dtype=np.float64)
    if upstream.shape != (n, k):
        raise ValueError(f"upstream has shape {upstream.shape}, not {(n, k)}")
    logs = np.log(np.clip(upstream, LOG_FLOOR, 1.0))
    return np.asarray(logs - logs.mean(axis=1, keepdims=True))
