"""What the operator tells its log as it works, so that a person can see it work.

At INFO: the input partitions a worker answers, each time its assignment changes, and every
``summary_interval_s`` one line of what it did since the last one (events answered, the LLM's
share of them, dead letters, the model version), read from its metrics.

>>> from streamcascade.operators.metrics import OperatorMetrics
>>> metrics = OperatorMetrics(["hashed", "llm"])
>>> activity = ActivityLog(metrics, "comments")
>>> metrics.stage_out.labels("hashed").inc(3); metrics.stage_out.labels("llm").inc(1)
>>> metrics.dead_letters.labels("malformed_json").inc()
>>> print(activity.summary(model_version=7, now=activity.since + 60))
... # doctest: +NORMALIZE_WHITESPACE
the last 60 s: 4 events answered (LLM 25%), 1 dead letter; since start: 4 events answered
(LLM 25%), 1 dead letter; model version 7
>>> print(activity.summary(model_version=8, now=activity.since + 30))
... # doctest: +NORMALIZE_WHITESPACE
the last 30 s: 0 events answered, 0 dead letters; since start: 4 events answered (LLM 25%),
1 dead letter; model version 8
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter

from streamcascade.operators.metrics import OperatorMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Counts:
    answered: float = 0.0
    by_llm: float = 0.0
    dead_letters: float = 0.0

    def __sub__(self, other: _Counts) -> _Counts:
        return _Counts(self.answered - other.answered, self.by_llm - other.by_llm,
                       self.dead_letters - other.dead_letters)

    def describe(self) -> str:
        share = f" (LLM {self.by_llm / self.answered:.0%})" if self.answered else ""
        letters = "dead letter" if self.dead_letters == 1 else "dead letters"
        return f"{self.answered:.0f} events answered{share}, {self.dead_letters:.0f} {letters}"


class ActivityLog:
    """The operator's log lines about its work (see the module docstring)."""

    def __init__(self, metrics: OperatorMetrics, source: str) -> None:
        self.metrics = metrics
        self.source = source
        #: The input partitions assigned to this worker, and the ones last announced.
        self.partitions: set[int] = set()
        self._announced: set[int] | None = None
        self._last = _Counts()
        #: When the last summary was made (monotonic seconds).
        self.since = time.monotonic()

    def assigned(self, topic_partitions: Iterable[tuple[str, int]]) -> None:
        """Note the worker's new assignment (pairs of topic and partition)."""
        self.partitions = {p for topic, p in topic_partitions if topic == self.source}

    def announce(self) -> None:
        """Log the input partitions answered, if they changed since the last time."""
        if self.partitions == self._announced:
            return
        self._announced = set(self.partitions)
        if self.partitions:
            word = "partition" if len(self.partitions) == 1 else "partitions"
            log.info("answering %s %s %s", self.source, word, sorted(self.partitions))
        else:
            log.info("answering no partition of %s (the group's other workers hold them)",
                     self.source)

    def summary(self, model_version: int, now: float | None = None) -> str:
        """The line of the work since the last summary (and since start)."""
        now = time.monotonic() if now is None else now
        counts = self._counts()
        recent = counts - self._last
        line = (f"the last {now - self.since:.0f} s: {recent.describe()}; since start: "
                f"{counts.describe()}; model version {model_version}")
        self._last, self.since = counts, now
        return line

    def _counts(self) -> _Counts:
        stages = self.metrics.stages
        answered = _by_label(self.metrics.stage_out)
        return _Counts(sum(answered.get(s, 0.0) for s in stages),
                       answered.get(stages[-1], 0.0),
                       sum(_by_label(self.metrics.dead_letters).values()))


def _by_label(counter: Counter) -> dict[str, float]:
    """A labelled counter's totals, by its (one) label's value."""
    return {next(iter(sample.labels.values()), ""): sample.value
            for family in counter.collect() for sample in family.samples
            if sample.name.endswith("_total")}
