"""The contract of the cascade's last stage: an LLM that answers events and never learns.

Backends: answers recorded in a dataset file (benchmarks, the demo) and a live OpenAI-compatible
chat-completions server. The call is async so that the Kafka operator's event loop never blocks on
the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from streamcascade.models.types import Event, LabelSet

#: A live backend's defaults: events asked at once, and seconds one request may take (an answer
#: is a label of a few tokens: a server silent for this long is stuck, not busy).
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 10.0

#: What becomes of an event the LLM cannot answer (it timed out, was down, or named no label):
#: ``degrade``: the earlier stage least likely to disagree with the LLM answers, marked
#: ``degraded``; ``dead-letter``: no answer (the operator writes a dead letter); ``wait``: ask
#: again, with backoff, until the LLM answers (the batch, and the partition, wait meanwhile).
LLMFailureMode = Literal["degrade", "dead-letter", "wait"]
LLM_FAILURE_MODES: tuple[LLMFailureMode, ...] = ("degrade", "dead-letter", "wait")
#: A dead letter by default: an answer that is not the LLM's where the cascade deferred to the LLM
#: falls outside the operating point's quality bound, so it is given only to a user who asks for
#: it (``degrade``), and a dead letter keeps the event, its bytes and its position for a replay.
DEFAULT_LLM_FAILURE: LLMFailureMode = "dead-letter"


@dataclass(frozen=True, slots=True)
class LLMAnswer:
    """One answer: a label index, or ``None`` with ``error`` saying why there is no answer.

    An answer outside the label set is no answer; it is never guessed. ``retryable`` marks a
    failure that asking again later may mend (the server timed out, was down, refused, or sent
    something unreadable), as opposed to an answer that was given and names no label. ``calls``
    is the number of requests the answer is charged for: 2 when a hedge went out beside the first.
    """

    label: int | None
    cost: float
    error: str | None = None
    raw: str | None = None
    retryable: bool = False
    calls: int = 1


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


@runtime_checkable
class ReportsHealth(Protocol):
    """A backend that can say how its server is doing (a live one; a recorded one cannot fail)."""

    def health(self) -> dict[str, Any]:
        """Plain figures, fit for JSON and metrics: request, retry, hedge and timeout counts,
        the circuit breaker's state, the observed latency."""
        ...
