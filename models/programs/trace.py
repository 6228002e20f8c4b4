"""One event's run of a program: the module calls it made, what each chose and what it cost.

A :class:`Trace` is the context a module call finds (through a context variable, so that every
event of a batch runs concurrently with its own), and what learning needs later, when the event's
ground truth arrives: each call's site, the policy's input, the backend chosen and how likely
that choice was, and the event's cost before the call (the cost a choice is answerable for is the
cost from its call on).

Costs are charged by key, once per event: a stage that two modules (or the policy's features and a
module) run on the same text is paid for once, and a module called inside another module's
backend is charged as its own call, never again inside the outer backend's price.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamcascade.models.types import Event


class ModuleCallFailed(Exception):
    """A module call that cannot give an answer: its event's decision carries the reason.

    Internal to the program runtime: the runtime turns it into a decision with an error (which
    the operator dead-letters), never into a crashed batch.
    """


@dataclass(slots=True)
class Call:
    """One module call of an event's run."""

    site: str
    module: str
    arm: int  # the index of the backend chosen among the module's backends
    backend: str
    features: np.ndarray  # what the site's policy read
    behaviour: np.ndarray  # the probabilities the backends had when the choice was drawn
    cost_before: float  # the event's cost before this call
    value: Any  # the module's input, for teaching its learnable backends
    label: str | None = None
    confidence: float = 1.0
    charged: float = 0.0  # what the call added to the event's cost (nested calls included)


class Runner(Protocol):
    """What a module call asks of the runtime that runs the program."""

    async def call_module(self, trace: Trace, module: Any, value: Any, site: str) -> str: ...


@dataclass(slots=True)
class Trace:
    """An event's run: its features, its calls, its cost so far."""

    event: Event
    runner: Runner
    features: np.ndarray  # the event's features (the first stage's reading of its text)
    #: Forced backend choices, in call order (the hindsight oracle's runs); ``None`` to ask the
    #: policy.
    forced: list[int] | None = None
    #: Shared between runs of the same event (the oracle's), so stages predict once per event.
    memo: dict[Hashable, Any] = field(default_factory=dict)
    cost: float = 0.0
    calls: list[Call] = field(default_factory=list)
    charged: set[Hashable] = field(default_factory=set)
    occurrences: Counter[str] = field(default_factory=Counter)
    #: For the oracle's enumeration: how many backends each call past ``forced`` could choose.
    branching: list[int] = field(default_factory=list)
    choices: int = 0  # backend choices made so far
    final: int | None = None  # the program's answer (a label index of its task)

    def charge(self, key: Hashable, cost: float) -> bool:
        """Pay ``cost`` for ``key`` unless this event already paid for it; True if paid now."""
        if key in self.charged:
            return False
        self.charged.add(key)
        self.cost += float(cost)
        return True

    @property
    def probing(self) -> bool:
        return self.forced is not None


#: The trace of the event whose program is running in the current task.
CURRENT: ContextVar[Trace | None] = ContextVar("streamcascade_program_trace", default=None)


def input_key(value: Any) -> Hashable:
    """A key for a module's input, to recognise the same input called twice in one event."""
    try:
        hash(value)
        return (type(value).__name__, value)
    except TypeError:
        return ("json", json.dumps(value, sort_keys=True, default=repr))
