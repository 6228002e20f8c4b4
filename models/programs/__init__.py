"""Foundation-model programs: a task written as an async Python function over the event whose
module calls a learned policy routes, per call and per event, to one of several backends of
different cost (online stages, LLMs, a user's own functions), learned from the final answer's
ground truth under a budget.

A compiled program is a :class:`~streamcascade.models.protocol.StreamModel`, so the replay and
the Kafka operator serve it as they serve a cascade.
"""

from streamcascade.models.programs.backends import (
    Backend,
    FunctionBackend,
    LLMModuleBackend,
    StageBackend,
)
from streamcascade.models.programs.module import Module, Modules
from streamcascade.models.programs.program import CHOOSERS, Program, ProgramConfig
from streamcascade.models.programs.runtime import CompiledProgram

__all__ = [
    "CHOOSERS",
    "Backend",
    "CompiledProgram",
    "FunctionBackend",
    "LLMModuleBackend",
    "Module",
    "Modules",
    "Program",
    "ProgramConfig",
    "StageBackend",
]
