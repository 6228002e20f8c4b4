"""Programs of a user's own module, for ``streamcascade worker --program MODULE:ATTRIBUTE``."""

from __future__ import annotations

from program_synthetic import LABELS, TASK, KindStage, answer_module, route_program

from streamcascade.models.programs import CompiledProgram, Module, Modules, Program, ProgramConfig
from streamcascade.models.programs.builtin import Sources
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event


async def _ask(event: Event, m: Modules) -> str:
    return await m.ask(event.text)


async def _ask_twice(event: Event, m: Modules) -> str:
    await m.answer(event.text)
    return await m.answer(event.text, site="again")


#: A module without a backend: refused when the worker compiles it.
no_backend = Program("no_backend", TASK, [Module("ask", LABELS, [])], _ask, [KindStage()])
#: A program that calls one module twice (the output names both backends, in call order).
twice = Program("twice", TASK, [answer_module()], _ask_twice, [KindStage()])
compiled = CompiledProgram(route_program(), ProgramConfig(budget=50.0))
not_a_program = 3


def build(task: Task, sources: Sources) -> Program:
    """A program for whichever task the worker names (the built-ins' signature)."""
    del sources  # (only function backends here)
    module = Module("answer", task.labels, answer_module().backends)
    return Program("built", task, [module], route_program().run, [KindStage(task.labels)])


__all__ = ["build", "compiled", "no_backend", "not_a_program", "twice"]
