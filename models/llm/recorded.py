"""An LLM backend that answers from recorded answers: benchmarks and the demo, at the LLM's price.

Each event id is answered with the raw answer the named LLM gave for it (the ``llm`` field of a
shared-format stream file), read by :meth:`Task.parse_answer` exactly as the online-cascade paper's
code reads it. An answer that names no label is no answer (``label=None``), never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streamcascade.models.costs import llm_cost
from streamcascade.models.datasets import iter_stream
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event, LabelSet


class RecordedLLM:
    """Recorded answers of the LLM ``name`` for the events of ``records_path``.

    Parameters
    ----------
    records_path
        A stream file in the shared format.
    name
        The key of the answers in each row's ``llm`` object, e.g. ``"gpt-3.5-turbo-1106"``.
    task
        Reads the raw answers into label indices.
    cost
        Price of one answer in paper units; by default the LLM's size (see :mod:`..costs`).
    """

    def __init__(self, records_path: Path | str, name: str, task: Task,
                 cost: float | None = None) -> None:
        self.records_path = Path(records_path)
        self.name = name
        self.task = task
        self.labels: LabelSet = task.labels
        self.cost = float(cost) if cost is not None else llm_cost(name)
        self._raw: dict[str, str] = {}
        for row in iter_stream(self.records_path):
            if name in row.llm:
                self._raw[row.id] = row.llm[name]
        if not self._raw:
            raise ConfigurationError(f"{self.records_path} holds no recorded answers of {name!r}")
        self.calls = 0

    def raw_answer(self, event_id: str) -> str | None:
        """The recorded raw answer for ``event_id``, if any."""
        return self._raw.get(event_id)

    def answer_now(self, event_id: str) -> LLMAnswer:
        """The parsed recorded answer for one event id (synchronous; used by :meth:`answer`)."""
        raw = self._raw.get(event_id)
        if raw is None:
            return LLMAnswer(label=None, cost=0.0,
                             error=f"no recorded answer for event {event_id!r}")
        label = self.task.parse_answer(raw)
        if label is None:
            return LLMAnswer(label=None, cost=self.cost, raw=raw,
                             error=f"the answer names none of the labels: {raw[:80]!r}")
        return LLMAnswer(label=label, cost=self.cost, raw=raw)

    async def answer(self, events: Sequence[Event]) -> list[LLMAnswer]:
        self.calls += len(events)
        return [self.answer_now(e.id) for e in events]
