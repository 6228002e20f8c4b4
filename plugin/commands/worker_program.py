"""The program a ``streamcascade worker --program NAME`` serves, built from the worker's flags.

``NAME`` is a built-in program (``streamcascade program list``) or a user's, given as
``module:attribute`` the way other Python servers take an app. The attribute is a
:class:`~streamcascade.models.programs.Program`, a function ``build(task, sources) -> Program``
(the built-ins' signature: ``sources`` holds the backends the flags make available), or a
:class:`~streamcascade.models.programs.CompiledProgram` served as it is.

Everything that can be refused is refused here, before the worker touches the cluster: an unknown
program, a module without backends, a budget below the cheapest way to answer an event, flags
that only a cascade takes.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamcascade.errors import ConfigurationError, StreamcascadeError

if TYPE_CHECKING:
    from streamcascade.models.llm.base import LLMBackend
    from streamcascade.models.programs import CompiledProgram, ProgramConfig
    from streamcascade.models.programs.builtin import Sources
    from streamcascade.models.tasks import Task
    from streamcascade.settings import Settings

#: The stages a program's featurizer may use (the built-ins stack ONNX on the first stage).
PROGRAM_STAGES = ("hashed", "onnx")


@dataclass
class ProgramFlags:
    """The worker's flags that shape a program (``None``: not given)."""

    budget: float | None = None
    budget_mode: str | None = None
    cost_weight: float | None = None
    backend_costs: tuple[str, ...] = ()
    warmup: int | None = None
    seed: int | None = None
    stages: str | None = None
    stage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    llm: str | None = None
    llm_records: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None

    def shapes_the_config(self) -> list[str]:
        """The flags given that set the program's config (a compiled program has its own)."""
        given = {"--budget": self.budget, "--budget-mode": self.budget_mode,
                 "--cost-weight": self.cost_weight, "--warmup": self.warmup, "--seed": self.seed,
                 "--backend-cost": self.backend_costs or None}
        return [flag for flag, value in given.items() if value is not None]


def build_program_from_flags(name: str, task: Task | None, flags: ProgramFlags,
                             settings: Settings) -> CompiledProgram:
    """The compiled program ``name`` under ``flags``; ``task`` is ``--task``/``--labels``
    (needed by a built-in, optional for a user's ``Program``, which names its own)."""
    from streamcascade.models.programs import CompiledProgram, Program
    from streamcascade.models.programs.builtin import PROGRAMS, build_program

    if ":" not in name:
        if name not in PROGRAMS:
            raise ConfigurationError(
                f"unknown program {name!r}: built-in programs are {sorted(PROGRAMS)} "
                "(`streamcascade program list`); a program of your own is MODULE:ATTRIBUTE")
        if task is None:
            raise ConfigurationError(f"program {name!r} needs its task: --task or --labels")
        return CompiledProgram(build_program(name, task, _sources(task, flags, settings)),
                               program_config(flags))
    found = load_attribute(name)
    if isinstance(found, CompiledProgram):
        given = flags.shapes_the_config()
        if given:
            raise ConfigurationError(f"{name} is a compiled program with its own config; "
                                     f"drop {', '.join(given)} (or give the Program)")
        _check_task(name, found.task, task)
        return found
    if isinstance(found, Program):
        _check_task(name, found.task, task)
        return CompiledProgram(found, program_config(flags))
    if callable(found):
        if task is None:
            raise ConfigurationError(f"{name} builds a program for a task: give --task or "
                                     "--labels")
        built = found(task, _sources(task, flags, settings))
        if not isinstance(built, Program):
            raise ConfigurationError(f"{name}(task, sources) returned "
                                     f"{type(built).__name__}, not a Program")
        return CompiledProgram(built, program_config(flags))
    raise ConfigurationError(f"{name} is a {type(found).__name__}: a program is a Program, a "
                             "CompiledProgram or a function (task, sources) -> Program")


def load_attribute(target: str) -> Any:
    """``module:attribute`` (dots allowed on both sides), imported from the current directory
    too, as Python servers do with an app."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"a program of your own is MODULE:ATTRIBUTE, got {target!r}")
    if os.getcwd() not in sys.path:  # (a console script's path lacks it; `python -m` has it)
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except StreamcascadeError as exc:  # the module declares a program we refuse
        raise ConfigurationError(f"cannot load program {target}: {exc}") from None
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r} for program {target}: "
                                 f"{exc}") from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r} "
                                     f"(program {target})") from None
    return found


def program_config(flags: ProgramFlags) -> ProgramConfig:
    """The program's config from the flags given (validated)."""
    from streamcascade.models.programs import ProgramConfig

    config = ProgramConfig(budget=flags.budget, cost_weight=flags.cost_weight,
                           backend_costs=parse_prices(flags.backend_costs))
    if flags.budget_mode is not None:
        config.budget_mode = flags.budget_mode
    if flags.warmup is not None:
        config.warmup = flags.warmup
    if flags.seed is not None:
        config.seed = flags.seed
    config.validate()
    return config


def parse_prices(pairs: tuple[str, ...]) -> dict[str, float]:
    """``("gpt-3.5-turbo-1106=900",)`` as ``{backend: cost}``."""
    prices: dict[str, float] = {}
    for pair in pairs:
        backend, sep, price = pair.partition("=")
        try:
            if not (sep and backend.strip()):
                raise ValueError(pair)
            prices[backend.strip()] = float(price)
        except ValueError:
            raise ConfigurationError(f"--backend-cost takes NAME=COST, got {pair!r}") from None
    return prices


def _check_task(name: str, own: Task, given: Task | None) -> None:
    if given is not None and given.name != own.name:
        raise ConfigurationError(f"program {name} answers the {own.name} task, not "
                                 f"{given.name}: drop --task (the program names its own)")


def _sources(task: Task, flags: ProgramFlags, settings: Settings) -> Sources:
    """The backends the flags make available to a program built for ``task``."""
    from streamcascade.models.programs.builtin import RECORDED_LLMS, Sources

    stages = [s.strip() for s in (flags.stages or "hashed").split(",") if s.strip()]
    if not stages or stages[0] != "hashed" or not set(stages) <= set(PROGRAM_STAGES) \
            or len(set(stages)) < len(stages):
        raise ConfigurationError(f"a program's --stages are hashed or hashed,onnx (its "
                                 f"features), got {flags.stages!r}")
    names = tuple(n.strip() for n in (flags.llm or "").split(",") if n.strip())
    if names and flags.llm_records is None:
        raise ConfigurationError("--llm names recorded answers: give the file with "
                                 "--llm-records")
    sources = Sources(dataset=Path(flags.llm_records) if flags.llm_records else None,
                      recorded=names or RECORDED_LLMS, onnx="onnx" in stages,
                      live=_live(task, flags, settings), stage_options=flags.stage_options)
    if names:  # named ones must be there (unnamed defaults are taken where the file has them)
        have = {llm.name for llm in sources.recorded_llms(task)}
        missing = [n for n in names if n not in have]
        if missing:
            raise ConfigurationError(f"{flags.llm_records} holds no recorded answers of "
                                     f"{missing}")
    return sources


def _live(task: Task, flags: ProgramFlags, settings: Settings) -> LLMBackend | None:
    if flags.llm_url is None:
        if flags.llm_model is not None:
            raise ConfigurationError("--llm-model names the model of --llm-url: give both")
        return None
    from streamcascade.models.llm.factory import make_llm

    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return make_llm(task, url=flags.llm_url, model=flags.llm_model, api_key=key,
                    concurrency=settings.llm_concurrency, timeout=settings.llm_timeout_s,
                    deadline=settings.llm_deadline_s, hedge=settings.llm_hedge)
