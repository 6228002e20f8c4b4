"""What a module's answer can come from: an online stage, an LLM, or a user's own function.

A backend answers one module call (through a batcher, so that the concurrent runs of a batch share
one stage prediction or one LLM request list), says what a call costs in the paper's units
(parameters relative to BERT-base, see :mod:`streamcascade.models.costs`) and, optionally, in money
(``price``), and charges its event for it once per input. A backend never learns on its own; the
runtime teaches the learnable ones (stages) from the final answer's ground truth.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from streamcascade.models.llm.base import LLMAnswer, LLMBackend
from streamcascade.models.programs.batcher import TickBatcher
from streamcascade.models.programs.trace import ModuleCallFailed, Trace, input_key
from streamcascade.models.stages.base import Stage
from streamcascade.models.types import Event, LabelSet

#: A backend's answer: a label name of its module, and how sure it is (1 when it cannot say).
Answer = tuple[str, float]


def text_input(value: Any) -> str:
    """The text a text backend reads: a string as it is; a call with anything else fails."""
    if isinstance(value, str):
        return value
    raise ModuleCallFailed(f"a text backend was called with a {type(value).__name__}, not text")


class Backend(abc.ABC):
    """One way to answer a module's calls."""

    name: str
    #: Price of one call in the paper's units; the runtime may override it by name.
    cost: float
    #: Price of one call in money, where one is set (reported, not steered by).
    price: float | None = None
    #: Whether the hindsight oracle may ask it for free: recorded answers and local stages may
    #: be, a live service may not.
    probe_free: bool = False

    @abc.abstractmethod
    async def call(self, trace: Trace, value: Any) -> Answer:
        """Answer ``value`` for the event of ``trace`` (charging ``trace``); a
        :class:`ModuleCallFailed` when there is no answer."""

    def stages(self) -> list[Stage]:
        """The learnable stages this backend answers with (upstream ones first)."""
        return []


#: Reads a module's label from a stage's probabilities (over the stage's own labels).
Decide = Callable[[np.ndarray, LabelSet], str]


class StageBackend(Backend):
    """An online stage (``hashed``, ``onnx``, ...) answering a module.

    By default the stage's labels are the module's and its answer is its most probable label;
    then the stage learns from the module's lessons (the module's ``teach``). ``decide`` reads
    the module's label from probabilities over other labels instead (a gate that opens where a
    task's stage gives a class some probability): such a stage learns elsewhere (as the
    program's featurizer, or another module's backend). ``upstream`` is the backend of the
    stage this one stacks on (the ONNX stage reads the first stage's probabilities), run first
    and charged once; ``text`` reads the text from the module's input (the input itself by
    default).
    """

    probe_free = True

    def __init__(self, stage: Stage, *, upstream: StageBackend | None = None,
                 name: str | None = None, decide: Decide | None = None,
                 text: Callable[[Any], str] = text_input, max_batch: int = 256) -> None:
        self.stage = stage
        self.upstream = upstream
        self.name = name or stage.name
        self.decide = decide
        self.text = text
        self._batcher: TickBatcher[tuple[str, np.ndarray | None], np.ndarray] = TickBatcher(
            self._predict, max_batch)

    @property
    def cost(self) -> float:
        return float(self.stage.cost)

    @cost.setter
    def cost(self, value: float) -> None:
        self.stage.cost = float(value)

    @property
    def labels(self) -> LabelSet:
        return self.stage.labels

    def _predict(self, items: Sequence[tuple[str, np.ndarray | None]]) -> list[np.ndarray]:
        texts = [t for t, _ in items]
        ups = [u for _, u in items]
        upstream = None if any(u is None for u in ups) else np.stack(
            [u for u in ups if u is not None])
        return list(self.stage.predict_proba(texts, upstream))

    async def proba(self, trace: Trace, text: str) -> np.ndarray:
        """The stage's probabilities for ``text`` (its upstream's first), charged once."""
        key = ("proba", id(self.stage), text)
        found = trace.memo.get(key)
        if found is None:
            upstream = await self.upstream.proba(trace, text) if self.upstream else None
            found = await self._batcher.submit((text, upstream))
            trace.memo[key] = found
        elif self.upstream is not None:
            await self.upstream.proba(trace, text)  # (its charge, where this run has not paid)
        trace.charge(("stage", id(self.stage), text), self.stage.cost)
        return np.asarray(found)

    @property
    def learns_module_labels(self) -> bool:
        """Whether the module's lessons teach this stage (its labels are the module's)."""
        return self.decide is None

    async def call(self, trace: Trace, value: Any) -> Answer:
        proba = await self.proba(trace, self.text(value))
        if self.decide is not None:
            return self.decide(proba, self.stage.labels), 1.0
        best = int(np.argmax(proba))
        return self.stage.labels.name(best), float(proba[best])

    def stages(self) -> list[Stage]:
        return [*(self.upstream.stages() if self.upstream else []), self.stage]


#: Maps an LLM's label (of its own task) to the module's, or to None where it says nothing.
Projection = Callable[[str], str | None]


class LLMModuleBackend(Backend):
    """An LLM (recorded answers or any OpenAI-compatible server) answering a module.

    The LLM answers its own task's question about the event; ``project`` maps its label to the
    module's (``{"hate": "suspect", "noHate": "clean"}`` or a function), and an answer it maps to
    nothing is no answer. Recorded answers are the event's own answers, whatever the module's
    input: a program uses them only where the module asks the event's question (or a projection
    of it).
    """

    def __init__(self, llm: LLMBackend, *, project: Mapping[str, str | None] | Projection
                 | None = None, name: str | None = None, cost: float | None = None,
                 price: float | None = None, text: Callable[[Any], str] = text_input,
                 max_batch: int = 64) -> None:
        self.llm = llm
        self.name = name or llm.name
        self.cost = float(llm.cost if cost is None else cost)
        self.price = price
        self.text = text
        if project is None:
            self.project: Projection = _same_label
        elif isinstance(project, Mapping):
            mapping = dict(project)
            self.project = mapping.get
        else:
            self.project = project
        self.probe_free = hasattr(llm, "answer_now")
        self._batcher: TickBatcher[Event, LLMAnswer] = TickBatcher(self._ask, max_batch)

    async def _ask(self, events: Sequence[Event]) -> list[LLMAnswer]:
        return list(await self.llm.answer(list(events)))

    async def call(self, trace: Trace, value: Any) -> Answer:
        text = self.text(value)
        key = ("llm", self.name, trace.event.id, input_key(value))
        answer = trace.memo.get(key)
        if answer is None:
            if trace.probing and hasattr(self.llm, "answer_now"):
                answer = self.llm.answer_now(trace.event.id)
            elif trace.probing:  # a probe never pays for a call
                raise ModuleCallFailed(f"{self.name} is not asked by a probe")
            else:
                answer = await self._batcher.submit(Event(trace.event.id, text))
            trace.memo[key] = answer
        if answer.cost > 0:  # a call was made (a missing recorded answer costs nothing)
            trace.charge(("llm", self.name, input_key(value)), self.cost)
        if answer.label is None:
            raise ModuleCallFailed(f"{self.name} gave no answer: {answer.error}")
        if not 0 <= answer.label < len(self.llm.labels):
            raise ModuleCallFailed(f"{self.name} answered label index {answer.label!r}")
        own = self.llm.labels.name(int(answer.label))
        label = self.project(own)
        if label is None:
            raise ModuleCallFailed(f"{self.name} answered {own!r}, which this module's labels "
                                   "do not hold")
        return label, 1.0


def _same_label(label: str) -> str:
    return label


class FunctionBackend(Backend):
    """A user's own function of the module's input (sync or async) returning a label name.

    ``cost`` is the function's own compute: modules it calls are charged as their own calls.
    ``probe_free`` lets the hindsight oracle call it.
    """

    def __init__(self, name: str, fn: Callable[[Any], str | Awaitable[str]], *, cost: float,
                 price: float | None = None, probe_free: bool = False) -> None:
        self.name = name
        self.fn = fn
        self.cost = float(cost)
        self.price = price
        self.probe_free = probe_free

    async def call(self, trace: Trace, value: Any) -> Answer:
        if trace.probing and not self.probe_free:
            raise ModuleCallFailed(f"function backend {self.name!r} is not called by a probe")
        trace.charge(("function", self.name, input_key(value)), self.cost)
        out = self.fn(value)
        if inspect.isawaitable(out):
            out = await out
        if not isinstance(out, str):
            raise ModuleCallFailed(f"function backend {self.name!r} returned a "
                                   f"{type(out).__name__}, not a label name")
        return out, 1.0
