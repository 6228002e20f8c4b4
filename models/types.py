"""Value types shared by every part of the core.

An :class:`Event` is what a user asks about, a :class:`Decision` is the cascade's answer to it,
and a :class:`Demonstration` is a label from an expert (the LLM, or ground truth from a feedback
topic) that the learner imitates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from streamcascade.models.errors import UnknownLabelError

# Where a demonstration came from: the learner records it, the operator reads it from feedback.
SOURCE_LLM = "llm"
SOURCE_GROUND_TRUTH = "ground_truth"
SOURCE_AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class Event:
    """One input event: a stable id (the Kafka key downstream) and the text to classify."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class LabelSet:
    """The ordered set of class names of one task; stages work with their indices.

    >>> labels = LabelSet(("negative", "positive"))
    >>> labels.index("positive")
    1
    >>> labels.name(0)
    'negative'
    """

    names: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise ValueError(f"a task needs at least two labels, got {list(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"labels must be distinct, got {list(self.names)}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def of(cls, names: Iterable[str]) -> LabelSet:
        return cls(tuple(names))

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The index of ``name``; an :class:`UnknownLabelError` if it is not one of the labels."""
        try:
            return self._index[name]
        except KeyError:
            raise UnknownLabelError(name, self.names) from None

    def name(self, index: int) -> str:
        return self.names[index]


@dataclass(frozen=True, slots=True)
class Demonstration:
    """An expert's label for an event: the learning signal of imitation learning."""

    event: Event
    label: int
    source: str = SOURCE_LLM


@dataclass(slots=True)
class Decision:
    """The cascade's answer to one event.

    ``label`` is ``None`` only when the last stage failed to answer (``error`` says why); the
    operator turns such a decision into a dead letter rather than guess. ``degraded`` marks an
    answer an earlier stage gave because the LLM could not (``stage`` names it, ``error`` says
    why the LLM did not answer); it is never learned from as the LLM's. ``backends`` is a
    program's choice per module (``None`` for a cascade, whose ``stage`` says it all): each
    module called maps to its backend, or to its backends in call order if called again.
    """

    event_id: str
    label: str | None
    label_index: int | None
    stage: str
    stage_index: int
    confidence: float
    cost: float
    path: list[str]
    model_version: int = 0
    error: str | None = None
    degraded: bool = False
    backends: dict[str, str | list[str]] | None = None


def texts_of(events: Sequence[Event]) -> list[str]:
    return [e.text for e in events]
