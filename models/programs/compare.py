"""A program's replay beside its baselines, on the same stream, in the same cost units.

The baselines: every module on its cheapest backend and on its dearest; the recorded GPT-3.5
alone; the one-module router (the built-in ``route``) at the program's realised cost; the same
program choosing at random at that cost (a draw that favours cheaper backends just enough to
spend it); the existing cascade (its stages, then GPT-3.5) at that cost; and, within the
program's own replay, the hindsight oracle (per event, the cheapest combination of backends that
answers correctly). Every baseline learns from the same ground truth as the program.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.costs import llm_cost
from streamcascade.models.datasets import StreamRow
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.programs.builtin import Sources, build_program
from streamcascade.models.programs.program import ProgramConfig
from streamcascade.models.programs.replay import quality_of, replay_program, windows_on_budget
from streamcascade.models.programs.runtime import CompiledProgram
from streamcascade.models.replay import replay as replay_cascade
from streamcascade.models.replay import truth_of
from streamcascade.models.tasks import Task

#: The LLM every comparison names on its own.
REFERENCE_LLM = "gpt-3.5-turbo-1106"
#: The budgets of a sweep, as shares of the dearest baseline's cost per event.
SWEEP_SHARES = (0.1, 0.2, 0.3, 0.4, 0.55, 0.75)


@dataclass(frozen=True)
class ReplaySettings:
    """How every replay of a comparison runs."""

    truth_share: float = 1.0
    truth_delay: int = 0
    batch_size: int = 16
    progress: bool = True


def run_program(rows: Sequence[StreamRow], task: Task, name: str, sources: Sources,
                config: ProgramConfig, settings: ReplaySettings, *, oracle: bool = False,
                label: str | None = None) -> dict[str, Any]:
    """One replay of a fresh built-in program ``name``."""
    model = CompiledProgram(build_program(name, task, sources), config)
    return replay_program(rows, task, model, truth_share=settings.truth_share,
                          truth_delay=settings.truth_delay, batch_size=settings.batch_size,
                          oracle=oracle and model.probe_free,
                          progress=(label or name) if settings.progress else False)


def _at_cost(config: ProgramConfig, budget: float, cheapest: float,
             **changes: Any) -> ProgramConfig:
    """``config`` spending ``budget`` (raised to what the program cannot spend less than)."""
    return replace(config, budget=max(budget, cheapest), budget_mode="target",
                   cost_weight=None, **changes)


def _cheapest(task: Task, name: str, sources: Sources) -> float:
    return CompiledProgram(build_program(name, task, sources)).cheapest_cost


def _point(result: dict[str, Any]) -> dict[str, Any]:
    return {"quality": result["quality"], "cost_per_event": result["cost_per_event"]}


def compare(rows: Sequence[StreamRow], task: Task, name: str, sources: Sources,
            config: ProgramConfig, settings: ReplaySettings,
            sweep: Sequence[float] | None = None) -> dict[str, Any]:
    """The program's replay (with the oracle), its baselines, and optionally a budget sweep."""
    if not rows:
        raise ConfigurationError("the stream holds no events")
    main = run_program(rows, task, name, sources, config, settings, oracle=True)
    target = main["cost_per_event"]
    baselines: dict[str, dict[str, Any] | None] = {}
    for chooser in ("cheapest", "dearest"):
        baselines[chooser] = _point(run_program(
            rows, task, name, sources, replace(config, chooser=chooser, budget=None,
                                               cost_weight=None), settings,
            label=f"{name} {chooser}"))
    baselines[REFERENCE_LLM] = llm_alone(rows, task, sources, REFERENCE_LLM)
    if name == "route":
        router = _point(main) | {"same_as_program": True}
    else:
        router = _point(run_program(rows, task, "route", sources, _at_cost(
            config, target, _cheapest(task, "route", sources)), settings, label="router"))
    baselines["router"] = router
    baselines["random"] = _point(run_program(
        rows, task, name, sources, _at_cost(config, target, _cheapest(task, name, sources),
                                            chooser="random"), settings,
        label=f"{name} random"))
    baselines["cascade"] = cascade_at(rows, task, sources, target, settings, config.seed)
    dearest = baselines["dearest"]
    result: dict[str, Any] = {
        "program": name, "n": main["n"], "metric": main["metric"], "quality": main["quality"],
        "cost_per_event": target,
        "cost_vs_dearest": target / dearest["cost_per_event"]
        if dearest and dearest["cost_per_event"] else None,
        "backend_calls": main["backend_calls"], "oracle_quality": main.get("oracle_quality"),
        "baselines": baselines,
        "oracle_cost_per_event": main.get("oracle_cost_per_event"),
        "errors": main["errors"], "error_examples": main["error_examples"],
        "budget": config.budget, "cost_windows": main["cost_windows"],
        "warmup_events": main["warmup_events"], "lambda": main["lambda"],
        "policy_updates": main["policy_updates"], "seconds": main["seconds"],
        "config": config.to_dict(),
    }
    alone = baselines[REFERENCE_LLM]
    if alone:
        result["cost_vs_gpt"] = target / alone["cost_per_event"]
        result["quality_vs_gpt"] = result["quality"] - alone["quality"]
    if config.budget is not None:
        result["budget_windows"] = windows_on_budget(main, config.budget)
    if sweep:
        result["sweep"] = budget_sweep(rows, task, name, sources, config, settings, sweep)
    return result


def budget_sweep(rows: Sequence[StreamRow], task: Task, name: str, sources: Sources,
                 config: ProgramConfig, settings: ReplaySettings,
                 budgets: Sequence[float]) -> list[dict[str, Any]]:
    """One replay of the program per budget."""
    cheapest = _cheapest(task, name, sources)
    out = []
    for budget in budgets:
        if budget < cheapest:
            continue
        run = run_program(rows, task, name, sources, _at_cost(config, budget, cheapest),
                          settings, label=f"{name} budget {budget:.4g}")
        out.append({"budget": budget, **_point(run)})
    return out


def sweep_budgets(dearest_cost: float, shares: Sequence[float] = SWEEP_SHARES) -> list[float]:
    return [round(dearest_cost * s, 4) for s in shares]


def _recorded(task: Task, sources: Sources, llm: str) -> LLMBackend | None:
    for found in sources.recorded_llms(task):
        if found.name == llm:
            return found
    return None


def llm_alone(rows: Sequence[StreamRow], task: Task, sources: Sources,
              llm: str) -> dict[str, Any] | None:
    """The recorded ``llm`` answering every event on its own (an unread answer is wrong)."""
    found = _recorded(task, sources, llm)
    if found is None or not hasattr(found, "answer_now"):
        return None
    answers = [found.answer_now(r.id).label for r in rows]
    return {"quality": quality_of(task, answers, truth_of(rows, task)),
            "cost_per_event": float(found.cost)}


def cascade_at(rows: Sequence[StreamRow], task: Task, sources: Sources, target: float,
               settings: ReplaySettings, seed: int) -> dict[str, Any] | None:
    """The existing cascade (the program's stages, then GPT-3.5) with the share of events sent
    to the LLM that spends ``target`` per event, learning from the same ground truth."""
    llm = _recorded(task, sources, REFERENCE_LLM)
    if llm is None:
        return None
    stages = ["hashed", "onnx"] if sources.onnx else ["hashed"]
    options: dict[str, dict[str, Any]] = {s: dict(sources.stage_options.get(s, {}))
                                          for s in stages if s in sources.stage_options}
    probe = build_cascade(task, llm, CascadeConfig(stages=stages), **options)
    stage_cost = sum(s.cost for s in probe.stages)
    share = float(np.clip((target - stage_cost) / llm_cost(llm.name), 0.0, 1.0))
    cascade = build_cascade(task, llm, CascadeConfig(stages=stages, target_llm_share=share,
                                                     seed=seed), **options)
    result = replay_cascade(rows, task, cascade, feedback="ground_truth",
                            truth_share=settings.truth_share, batch_size=settings.batch_size,
                            progress="cascade" if settings.progress else False)
    costs = result["relative_cost"] * llm_cost(llm.name)
    return {"quality": result["quality"], "cost_per_event": costs,
            "target_llm_share": share, "llm_call_fraction": result["llm_call_fraction"]}

