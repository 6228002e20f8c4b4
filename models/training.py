"""How the stages that train in the background keep up with the stream, for metrics.

A stage that trains on its own thread (the fine-tuned stage) never makes the stream wait: when
training falls behind, demonstrations wait in a backlog and, past its bound, the oldest are
dropped. A driver shows both figures without knowing the stage: the model reports them
(:class:`ReportsTraining`, which :class:`~streamcascade.models.cascade.Cascade` implements), and
the stages are recognised by what they offer (:class:`TrainsInBackground`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

#: The figures of one stage: demonstrations waiting, and dropped in all.
BACKLOG = "backlog"
DROPPED = "dropped"


@runtime_checkable
class TrainsInBackground(Protocol):
    """A stage whose training runs beside the stream and may fall behind it."""

    name: str

    @property
    def training_backlog(self) -> int:
        """Demonstrations waiting for training now."""
        ...

    @property
    def demonstrations_dropped(self) -> int:
        """Demonstrations dropped because training was behind, since the stage was built."""
        ...


@runtime_checkable
class ReportsTraining(Protocol):
    """A model that can say how its background training keeps up."""

    def training_report(self) -> dict[str, dict[str, int]]:
        """Per stage that trains in the background, by name: ``{"backlog": n, "dropped": n}``."""
        ...


def training_report(stages: Iterable[object]) -> dict[str, dict[str, int]]:
    """The :class:`ReportsTraining` figures of those ``stages`` that train in the background."""
    return {stage.name: {BACKLOG: int(stage.training_backlog),
                         DROPPED: int(stage.demonstrations_dropped)}
            for stage in stages if isinstance(stage, TrainsInBackground)}
