"""Small synthetic programs whose best backend choices are known, for the program tests.

An event's text is ``"<kind>:<label>:<n>"``: its kind (``a`` or ``b``) is what the featurizer
reads, its label the ground truth. Backends are functions of the text, so each one's accuracy
per kind is fixed by construction.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

import numpy as np

from streamcascade.models.programs import (
    CompiledProgram,
    FunctionBackend,
    Module,
    Modules,
    Program,
    ProgramConfig,
)
from streamcascade.models.stages.base import Stage
from streamcascade.models.state import pack_state
from streamcascade.models.tasks import Task, generic_task
from streamcascade.models.types import SOURCE_GROUND_TRUTH, Decision, Demonstration, Event, LabelSet

LABELS = LabelSet(("x", "y"))
TASK: Task = generic_task("synthetic", LABELS)


class KindStage(Stage):
    """A featurizer that tells the kinds apart: ``a`` reads as mostly ``x``, ``b`` as ``y``."""

    def __init__(self, labels: LabelSet = LABELS, name: str = "kind", cost: float = 0.0) -> None:
        self.labels, self.name, self.cost = labels, name, cost
        self.learned: list[tuple[str, int]] = []

    def predict_proba(self, texts: Sequence[str],
                      upstream: np.ndarray | None = None) -> np.ndarray:
        rows = [[0.9, 0.1] if t.startswith("a") else [0.1, 0.9] for t in texts]
        return np.array([r + [0.0] * (len(self.labels) - 2) for r in rows])

    def learn(self, texts: Sequence[str], targets: Sequence[int],
              upstream: np.ndarray | None = None) -> None:
        self.learned.extend(zip(texts, targets, strict=True))

    def state_bytes(self) -> bytes:
        return pack_state({"kind": "kind-stage", "n": len(self.learned)})

    def load_state(self, data: bytes) -> None:
        return None


def truth_of(text: str) -> str:
    return text.split(":")[1]


def wrong_of(text: str) -> str:
    return "y" if truth_of(text) == "x" else "x"


def events(n: int, seed: int = 0, kinds: str = "ab") -> list[tuple[Event, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind, label = rng.choice(kinds), rng.choice("xy")
        out.append((Event(str(i), f"{kind}:{label}:{i}"), LABELS.index(label)))
    return out


def answer_module(cheap_cost: float = 1.0, dear_cost: float = 100.0) -> Module:
    """``cheap`` is right on kind ``a`` only; ``dear`` is always right."""
    return Module("answer", LABELS, [
        FunctionBackend("cheap", lambda t: truth_of(t) if t.startswith("a") else wrong_of(t),
                        cost=cheap_cost, probe_free=True),
        FunctionBackend("dear", truth_of, cost=dear_cost, probe_free=True),
    ], teach={"x": "x", "y": "y"})


async def route(event: Event, m: Modules) -> str:
    return await m.answer(event.text)


def route_program(featurizer: Stage | None = None, **costs: float) -> Program:
    return Program("synthetic_route", TASK, [answer_module(**costs)], route,
                   [featurizer or KindStage()])


def gate_program() -> Program:
    """Two sites: a gate (``blind`` always opens; ``seer`` shuts exactly on label ``y``), then,
    where it opens, ``guess`` (always ``y``) or ``dear`` (always right). Best at a moderate
    price of cost: ``seer`` then ``dear``."""
    gate = Module("gate", ["open", "shut"], [
        FunctionBackend("blind", lambda t: "open", cost=0.0, probe_free=True),
        FunctionBackend("seer", lambda t: "shut" if truth_of(t) == "y" else "open", cost=2.0,
                        probe_free=True),
    ])
    final = Module("final", LABELS, [
        FunctionBackend("guess", lambda t: "y", cost=0.0, probe_free=True),
        FunctionBackend("dear", truth_of, cost=10.0, probe_free=True),
    ])

    async def run(event: Event, m: Modules) -> str:
        if await m.gate(event.text) == "shut":
            return "y"
        return await m.final(event.text)

    return Program("synthetic_gate", TASK, [gate, final], run, [KindStage()])


def run_stream(model: CompiledProgram, stream: Sequence[tuple[Event, int]],
               batch_size: int = 8,
               on_batch: Callable[[list[Decision]], None] | None = None) -> list[Decision]:
    """Answer ``stream`` in batches, learning each batch's ground truth after it is answered."""

    async def main() -> list[Decision]:
        out: list[Decision] = []
        for lo in range(0, len(stream), batch_size):
            part = stream[lo:lo + batch_size]
            answered = await model.answer([e for e, _ in part])
            out.extend(answered.decisions)
            if on_batch is not None:
                on_batch(answered.decisions)
            model.learn([Demonstration(e, y, SOURCE_GROUND_TRUTH) for e, y in part])
        return out

    return asyncio.run(main())


def compiled(program: Program, **config: object) -> CompiledProgram:
    return CompiledProgram(program, ProgramConfig(**config))  # type: ignore[arg-type]
