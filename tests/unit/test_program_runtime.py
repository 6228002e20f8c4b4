"""The program runtime: call sites, charging, bad input, batching, learning, state."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from program_synthetic import (
    LABELS,
    TASK,
    KindStage,
    answer_module,
    compiled,
    events,
    route_program,
    run_stream,
    truth_of,
)

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.programs import (
    CompiledProgram,
    FunctionBackend,
    LLMModuleBackend,
    Module,
    Modules,
    Program,
    ProgramConfig,
    StageBackend,
)
from streamcascade.models.protocol import StreamModel
from streamcascade.models.types import (
    SOURCE_GROUND_TRUTH,
    SOURCE_LLM,
    Decision,
    Demonstration,
    Event,
)


class CountingLLM:
    """An LLM that answers the truth written in the text, and counts its calls."""

    def __init__(self, name: str = "llm", cost: float = 50.0, fail: bool = False) -> None:
        self.name, self.labels, self.cost, self.fail = name, LABELS, cost, fail
        self.asked: list[list[str]] = []

    async def answer(self, events: Sequence[Event]) -> list[LLMAnswer]:
        self.asked.append([e.id for e in events])
        if self.fail:
            return [LLMAnswer(None, self.cost, "the server timed out") for _ in events]
        return [LLMAnswer(LABELS.index(truth_of(e.text)), self.cost) for e in events]


def _answer(model: CompiledProgram, texts: Sequence[str]) -> list[Decision]:
    found = asyncio.run(model.answer([Event(str(i), t) for i, t in enumerate(texts)]))
    assert found.demonstrations == []
    return found.decisions


def _program(modules: list[Module], run, featurizer=None) -> Program:  # type: ignore[no-untyped-def]
    return Program("test", TASK, modules, run, [featurizer or KindStage()])


def _one(backend: FunctionBackend | LLMModuleBackend | StageBackend) -> Module:
    return Module("answer", LABELS, [backend])


async def _route(event: Event, m: Modules) -> str:
    return await m.answer(event.text)


# -- the protocol and the decisions -----------------------------------------------------------


def test_a_compiled_program_is_a_stream_model_whose_decisions_carry_choices_and_cost() -> None:
    model = compiled(route_program(), cost_weight=0.0)
    assert isinstance(model, StreamModel)
    assert model.stage_names == ["program", "cheap", "dear"]
    (decision,) = _answer(model, ["b:y:1"])
    assert decision.path in (["answer=cheap"], ["answer=dear"])
    backend = {"answer=cheap": 1.0, "answer=dear": 100.0}[decision.path[0]]
    assert backend < decision.cost < backend + 1e-3  # (plus the policy's own, tiny, compute)
    assert decision.stage == decision.path[0].split("=")[1]
    assert model.stage_names[decision.stage_index] == decision.stage
    assert decision.error is None and decision.label in ("x", "y")


def test_the_policys_own_compute_is_in_the_cost() -> None:
    featurizer = KindStage(cost=0.5)
    model = compiled(route_program(featurizer), chooser="cheapest")
    (decision,) = _answer(model, ["a:x:1"])
    assert decision.cost == pytest.approx(1.0 + 0.5)
    learned = compiled(route_program(KindStage(cost=0.5)), cost_weight=0.0)
    (decision,) = _answer(learned, ["a:x:1"])
    backend = 1.0 if decision.path == ["answer=cheap"] else 100.0
    policy_params = next(iter(learned.policies.values())).n_params
    assert decision.cost == pytest.approx(backend + 0.5 + policy_params / 110e6)


# -- bad input: an error per event, never a failed batch --------------------------------------


def test_a_program_that_raises_fails_its_event_only() -> None:
    async def picky(event: Event, m: Modules) -> str:
        if "boom" in event.text:
            raise KeyError("no such field")
        return await m.answer(event.text)

    model = compiled(_program([answer_module()], picky), chooser="cheapest")
    ok, bad = _answer(model, ["a:x:1", "a:boom:2"])
    assert ok.error is None and ok.label == "x"
    assert bad.label is None and bad.label_index is None
    assert "the program raised KeyError" in (bad.error or "")


def test_an_answer_outside_the_labels_is_an_error() -> None:
    async def off_task(event: Event, m: Modules) -> str:
        await m.answer(event.text)
        return "maybe"

    (decision,) = _answer(compiled(_program([answer_module()], off_task), chooser="cheapest"),
                          ["a:x:1"])
    assert decision.label is None and "'maybe'" in (decision.error or "")
    liar = _one(FunctionBackend("liar", lambda t: "z", cost=1.0))
    (decision,) = _answer(compiled(_program([liar], _route)), ["a:x:1"])
    assert decision.label is None
    assert "answered 'z', not one of ['x', 'y']" in (decision.error or "")


def test_a_failing_backend_is_an_error_with_its_reason() -> None:
    def broken(text: str) -> str:
        raise ConnectionError("refused")

    (decision,) = _answer(compiled(_program([_one(FunctionBackend("b", broken, cost=1.0))],
                                            _route)), ["a:x:1"])
    assert "backend 'b' of module 'answer' failed: ConnectionError: refused" in (
        decision.error or "")
    llm = CountingLLM(fail=True)
    (decision,) = _answer(compiled(_program([_one(LLMModuleBackend(llm))], _route)), ["a:x:1"])
    assert decision.label is None and "timed out" in (decision.error or "")
    assert decision.cost >= llm.cost  # the failed call was paid for


def test_a_program_that_cannot_answer_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="has no backend"):
        CompiledProgram(_program([Module("answer", LABELS, [])], _route))
    with pytest.raises(ConfigurationError, match="has no module"):
        CompiledProgram(_program([], _route))
    with pytest.raises(ConfigurationError, match="below the cheapest"):
        CompiledProgram(route_program(KindStage(cost=0.5)), ProgramConfig(budget=1.2))
    CompiledProgram(route_program(KindStage(cost=0.5)), ProgramConfig(budget=1.5))
    with pytest.raises(ConfigurationError, match="not both"):
        CompiledProgram(route_program(), ProgramConfig(budget=50.0, cost_weight=0.1))
    with pytest.raises(ConfigurationError, match="unknown backends"):
        CompiledProgram(route_program(), ProgramConfig(backend_costs={"nope": 1.0}))
    other = KindStage(labels=LABELS.__class__(("p", "q", "r")))
    with pytest.raises(ConfigurationError, match="answers with"):
        CompiledProgram(_program([_one(StageBackend(other))], _route))


def test_a_module_called_outside_a_program_says_so() -> None:
    with pytest.raises(RuntimeError, match="outside a program run"):
        answer_module()("a:x:1")


# -- call sites ------------------------------------------------------------------------------


def test_sites_are_where_calls_are_made_not_what_they_are_called_with() -> None:
    async def many(event: Event, m: Modules) -> str:
        first, second = await m.answer(event.text), await m.answer(event.text + "!")
        for word in event.text.split(":")[:2]:  # computed arguments, one site
            await m.answer(f"{event.text[0]}:{word}:0")
        await m.answer(event.text, site="named")
        return first if first == second else second

    model = compiled(_program([answer_module()], many), cost_weight=0.0)
    _answer(model, ["a:x:1", "b:y:2"])
    sites = sorted(model.policies)
    assert len(sites) == 4
    assert "answer@named" in sites
    assert all(s.startswith("answer@") for s in sites)
    assert any(":" in s.split("@")[1] and "many" in s for s in sites)


def test_a_module_inside_a_backend_is_its_own_site_and_charged_once() -> None:
    inner = Module("inner", LABELS, [FunctionBackend("fine", truth_of, cost=7.0)])

    async def outer_fn(text: str) -> str:
        return await inner(text)

    outer = Module("outer", LABELS, [FunctionBackend("wrapper", outer_fn, cost=3.0)])

    async def run(event: Event, m: Modules) -> str:
        return await m.outer(event.text)

    model = compiled(_program([outer, inner], run), cost_weight=0.0)
    (decision,) = _answer(model, ["a:y:1"])
    assert decision.label == "y"
    assert decision.cost == pytest.approx(10.0, abs=1e-3)  # 3 + 7, each once
    nested = [s for s in model.policies if "/" in s]
    assert nested and nested[0].startswith("outer@") and "inner@" in nested[0]
    assert decision.path == ["inner=fine", "outer=wrapper"]


def test_an_llm_asked_twice_for_one_event_is_paid_once() -> None:
    llm = CountingLLM(cost=50.0)
    twice = Module("twice", LABELS, [LLMModuleBackend(llm)])

    async def run(event: Event, m: Modules) -> str:
        await m.twice(event.text)
        return await m.twice(event.text)

    model = compiled(_program([twice], run), chooser="cheapest")
    decisions = _answer(model, ["a:x:1", "b:y:2"])
    assert [d.cost for d in decisions] == [50.0, 50.0]
    assert llm.asked == [["0", "1"]]  # one request list for the batch, not one per call


def test_a_featurizer_stage_a_module_also_calls_runs_once() -> None:
    class CountingStage(KindStage):
        calls = 0

        def predict_proba(self, texts, upstream=None):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            return super().predict_proba(texts, upstream)

    stage = CountingStage(cost=2.0)
    model = compiled(_program([_one(StageBackend(stage))], _route, stage), chooser="cheapest")
    decisions = _answer(model, ["a:x:1", "b:y:2", "a:y:3"])
    assert CountingStage.calls == 1
    assert [d.cost for d in decisions] == [2.0, 2.0, 2.0]
    assert [d.label for d in decisions] == ["x", "y", "x"]


def test_calls_that_reach_a_stage_together_are_one_batch() -> None:
    batches: list[int] = []

    class CountingStage(KindStage):
        def predict_proba(self, texts, upstream=None):  # type: ignore[no-untyped-def]
            batches.append(len(texts))
            return super().predict_proba(texts, upstream)

    model = compiled(_program([_one(StageBackend(CountingStage(name="s")))], _route),
                     chooser="cheapest")
    _answer(model, [f"a:x:{i}" for i in range(10)])
    assert batches == [10]


# -- learning --------------------------------------------------------------------------------


def test_learning_takes_ground_truth_only_and_teaches_module_stages() -> None:
    module_stage = KindStage(name="inner")
    module = Module("answer", LABELS, [StageBackend(module_stage)],
                    teach={"x": "y", "y": "x"})  # a module whose label is the truth's opposite
    featurizer = KindStage()
    model = compiled(_program([module], _route, featurizer), chooser="cheapest")
    _answer(model, ["a:x:1"])
    model.learn([Demonstration(Event("0", "a:x:1"), 1, SOURCE_LLM)])
    assert model.version == 0 and featurizer.learned == []
    model.learn([Demonstration(Event("0", "a:x:1"), 0, SOURCE_GROUND_TRUTH)])
    assert model.version == 1
    assert featurizer.learned == [("a:x:1", 0)]
    assert module_stage.learned == [("a:x:1", 1)]
    with pytest.raises(ValueError, match=r"not in 0\.\.1"):
        model.learn([Demonstration(Event("0", "a:x:1"), 5, SOURCE_GROUND_TRUTH)])


def test_truth_for_an_event_this_worker_did_not_answer_teaches_the_stages_only() -> None:
    featurizer = KindStage()
    model = compiled(route_program(featurizer), cost_weight=0.2, warmup=0)
    model.learn([Demonstration(Event("elsewhere", "a:x:9"), 0, SOURCE_GROUND_TRUTH)])
    assert featurizer.learned == [("a:x:9", 0)]
    assert model.n_learned == 1 and model.n_rewarded == 0 and not model.policies


def test_the_oracle_tries_every_combination_without_paying_or_learning() -> None:
    model = compiled(route_program(), cost_weight=0.2)
    found = asyncio.run(model.outcomes(Event("0", "b:x:1")))
    assert sorted((LABELS.name(label or 0), round(cost)) for label, cost in found) == [
        ("x", 100), ("y", 1)]
    assert model.n_learned == 0 and not model.backend_calls


# -- state -----------------------------------------------------------------------------------


def test_state_round_trips_and_refuses_another_programs_state() -> None:
    model = compiled(route_program(), budget=40.0, warmup=20, seed=1)
    run_stream(model, events(300, seed=1))
    blob = model.state_bytes()
    fresh = compiled(route_program(), budget=40.0, warmup=20, seed=1)
    fresh.load_state(blob)
    assert fresh.version == model.version and fresh.n_rewarded == model.n_rewarded
    assert fresh.controller.lam == pytest.approx(model.controller.lam)
    for site, policy in model.policies.items():
        np.testing.assert_array_equal(fresh.policies[site].theta, policy.theta)
    assert b"pickle" not in blob

    async def other(event: Event, m: Modules) -> str:
        return await m.answer(event.text)

    stranger = compiled(Program("other", TASK, [answer_module()], other, [KindStage()]))
    with pytest.raises(ModelStateError):
        stranger.load_state(blob)
    before = fresh.state_bytes(compress=False)
    with pytest.raises(ModelStateError):
        fresh.load_state(blob[: len(blob) // 2])
    assert fresh.state_bytes(compress=False) == before
