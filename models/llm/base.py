"""The contract of the cascade's last stage: an LLM that answers events and never learns.

Backends: answers recorded in a dataset file (benchmarks, the demo) and a live OpenAI-compatible
chat-completions server. The call is async so that the Kafka operator's event loop never blocks on
the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from streamcascade.models.types import Event, LabelSet


@dataclass(frozen=True, slots=True)
class LLMAnswer:
    """One answer: a label index, or ``None`` with ``error`` saying why there is no answer.

    An answer outside the label set is no answer; it is never guessed.
    """

    label: int | None
    cost: float
    error: str | None = None
    raw: str | None = None


@runtime_checkable
class LLMBackend(Protocol):
    name: str
    labels: LabelSet
    #: Cost of one answer in the paper's units (parameters relative to BERT-base); a live backend
    #: may also report the money it spent in :attr:`LLMAnswer.cost`.
    cost: float

    async def answer(self, events: Sequence[Event]) -> list[LLMAnswer]:
        """Answer every event, in order; failures are answers with ``label=None``."""
        ...
