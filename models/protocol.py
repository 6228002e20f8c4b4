"""The seam between the core and a driver (the replay, the Kafka operator).

A driver needs only this of the model it serves: answer a batch of events (decisions and the
demonstrations the answering produced, together), learn from demonstrations, and hand over or
take its learned state as bytes. :class:`~streamcascade.models.cascade.Cascade` is one such model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from streamcascade.models.tasks import Task
from streamcascade.models.types import Decision, Demonstration, Event


@dataclass(slots=True)
class BatchAnswer:
    """What answering a batch produced: one decision per event, in the events' order, and the
    demonstrations (the LLM's answers to deferred and audited events) to learn from."""

    decisions: list[Decision]
    demonstrations: list[Demonstration] = field(default_factory=list)


@runtime_checkable
class StreamModel(Protocol):
    """A model a driver can serve on a stream."""

    task: Task
    #: Bumped by every update that changed the learned state; published states carry it.
    version: int

    @property
    def stage_names(self) -> list[str]:
        """Every place an answer can come from, cheapest first (the LLM last)."""
        ...

    async def answer(self, events: Sequence[Event],
                     on_early: Callable[[list[Decision]], None] | None = None) -> BatchAnswer:
        """Answer ``events``; ``on_early`` receives the answers that need no LLM call, before
        the LLM is asked."""
        ...

    def learn(self, demos: Sequence[Demonstration]) -> None: ...

    def state_bytes(self, compress: bool = True) -> bytes: ...

    def load_state(self, data: bytes) -> None: ...
