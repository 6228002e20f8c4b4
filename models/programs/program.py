"""A program: an async function over an event that awaits modules, and how it is run.

::

    async def hate_gate(event: Event, m: Modules) -> str:
        if await m.gate(event.text) == "clean":
            return "noHate"
        return await m.hate(event.text)

    program = Program("hate_gate", TASKS["hatespeech"], [gate, hate], hate_gate,
                      featurizer=[first_stage])
    model = CompiledProgram(program, ProgramConfig(budget=300.0))

The program's answer is one of its task's labels. ``featurizer`` is the chain of stages over the
task's labels whose last probabilities are every call site's input (each stage after the first
reads the one before it, as the cascade's stages do); it learns from every ground truth, and its
price is counted in every event's cost as the policy's own compute. A featurizer stage may also be
a module's backend: it then runs once per event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from streamcascade.models.errors import ConfigurationError
from streamcascade.models.programs.module import Module, Modules
from streamcascade.models.stages.base import Stage
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event

ProgramFn = Callable[[Event, Modules], Awaitable[str]]

#: How a compiled program chooses backends: its learned policy, or a fixed rule (baselines).
CHOOSERS = ("learned", "cheapest", "dearest", "random")
#: What a budget is: a spend to meet, or a spend not to exceed.
BUDGET_MODES = ("target", "cap")


@dataclass
class Program:
    """A task's program: its modules, its function, and the features its policy reads."""

    name: str
    task: Task
    modules: list[Module]
    run: ProgramFn
    featurizer: Sequence[Stage]
    description: str = ""

    def validate(self) -> None:
        if not self.modules:
            raise ConfigurationError(f"program {self.name!r} has no module")
        Modules(self.modules)  # distinct names
        for module in self.modules:
            module.validate()
        if not self.featurizer:
            raise ConfigurationError(f"program {self.name!r} has no featurizer stage")
        for stage in self.featurizer:
            if stage.labels != self.task.labels:
                raise ConfigurationError(
                    f"program {self.name!r}: featurizer stage {stage.name!r} answers with "
                    f"{list(stage.labels.names)}, the task with {list(self.task.labels.names)}")


@dataclass
class ProgramConfig:
    """How a program is run and learned; plain data.

    ``budget`` is the cost per event to keep (paper units, all in: the policy's features and
    choices too): spent (``budget_mode="target"``: the price of cost may go below zero, so that
    what is left buys the calls worth most) or not exceeded (``"cap"``: where the policy's best
    choices cost less, it spends less); without one, ``cost_weight`` is a fixed price of cost
    (``lambda``, in quality per dearest-backend cost; 0.1 when neither is given). ``warmup``
    ground truths are learned while every call picks a backend uniformly at random, before the
    policy chooses.
    ``temperature``, ``exploration`` (Thompson sampling's scale), ``exploration_floor`` (the
    share of draws spread over every backend), ``learning_rate``, ``learning_decay`` (updates
    until the step is ``1/sqrt(2)`` of it) and ``baseline_rate`` shape the policies (see
    :mod:`.policy`); ``budget_rate`` is the Lagrange multiplier's step. ``backend_costs``
    overrides a backend's price by name; ``trace_cache`` is the number of answered events whose
    runs are kept for their ground truth; ``chooser`` replaces the policy by a fixed rule
    (``cheapest``, ``dearest``, or ``random`` at the budget: a context-free draw, cheaper
    backends likelier, its price held by the same multiplier).
    """

    budget: float | None = None
    budget_mode: str = "target"
    cost_weight: float | None = None
    warmup: int = 200
    temperature: float = 0.02
    exploration: float = 0.05
    exploration_floor: float = 0.02
    learning_rate: float = 0.1
    learning_decay: float = 200.0
    baseline_rate: float = 0.1
    budget_rate: float = 0.02
    backend_costs: dict[str, float] = field(default_factory=dict)
    trace_cache: int = 16384
    chooser: str = "learned"
    seed: int = 0

    def validate(self) -> None:
        if self.budget is not None and self.cost_weight is not None:
            raise ConfigurationError("give a budget or a fixed cost weight, not both")
        if self.budget is not None and self.budget < 0:
            raise ConfigurationError(f"the budget must be >= 0, got {self.budget}")
        if self.cost_weight is not None and self.cost_weight < 0:
            raise ConfigurationError(f"the cost weight must be >= 0, got {self.cost_weight}")
        if not 0 <= self.exploration_floor < 1:
            raise ConfigurationError(f"exploration_floor must be in [0, 1), got "
                                     f"{self.exploration_floor}")
        if self.budget_mode not in BUDGET_MODES:
            raise ConfigurationError(f"budget_mode must be one of {BUDGET_MODES}, got "
                                     f"{self.budget_mode!r}")
        if self.chooser not in CHOOSERS:
            raise ConfigurationError(f"chooser must be one of {CHOOSERS}, got {self.chooser!r}")
        for name, value in (("temperature", self.temperature),
                            ("learning_rate", self.learning_rate),
                            ("learning_decay", self.learning_decay)):
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        for name, value in (("warmup", self.warmup), ("exploration", self.exploration),
                            ("baseline_rate", self.baseline_rate),
                            ("budget_rate", self.budget_rate), ("trace_cache", self.trace_cache)):
            if value < 0:
                raise ConfigurationError(f"{name} must be >= 0, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
