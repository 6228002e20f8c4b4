"""What becomes of an event the LLM cannot answer: degrade, dead-letter or wait; and a replay whose
micro-batches are answered concurrently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cascade_streams import sentiment_stream, write_stream

from streamcascade.errors import ConfigurationError
from streamcascade.models import cascade as cascade_module
from streamcascade.models.cascade import (
    DEFAULT_LLM_FAILURE,
    LLM_FAILURE_MODES,
    Cascade,
    CascadeConfig,
    build_cascade,
)
from streamcascade.models.datasets import StreamRow, read_stream
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.replay import replay
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event, LabelSet

TASK = TASKS["imdb"]
TIMEOUT = "LLMTimeoutError: no answer within the deadline"


@dataclass
class ScriptedLLM:
    """An LLM backend that answers the label of the event's text (``positive`` if it says so),
    except for the ids in ``failing``: those get ``failure`` for their first ``fail_times`` asks
    (forever when None)."""

    failing: set[str] = field(default_factory=set)
    failure: LLMAnswer = field(default_factory=lambda: LLMAnswer(None, 0.0, TIMEOUT,
                                                                 retryable=True))
    fail_times: int | None = None
    delay: float = 0.0
    calls: int = 0
    asked: dict[str, int] = field(default_factory=dict)
    name: str = "scripted"
    labels: LabelSet = TASK.labels
    cost: float = 100.0
    answer_calls: int = 1

    async def answer(self, events: Sequence[Event]) -> list[LLMAnswer]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for event in events:
            seen = self.asked[event.id] = self.asked.get(event.id, 0) + 1
            if event.id in self.failing and (self.fail_times is None or seen <= self.fail_times):
                out.append(self.failure)
            else:
                label = int("great" in event.text or "wonderful" in event.text)
                out.append(LLMAnswer(label, self.cost, calls=self.answer_calls))
        return out


def make(llm: ScriptedLLM, mode: str | None = None, **config: Any) -> Cascade:
    if mode is not None:
        config["on_llm_failure"] = mode
    config.setdefault("warmup", 10_000)  # every event goes to the LLM
    return build_cascade(TASK, llm, CascadeConfig(**config))


def ask(cascade: Cascade, texts: list[str]) -> Any:
    return asyncio.run(cascade.answer([Event(str(i), t) for i, t in enumerate(texts)]))


TEXTS = ["a great film", "an awful film", "a wonderful cast", "a boring plot"]


def test_the_modes_and_the_default() -> None:
    assert LLM_FAILURE_MODES == ("degrade", "dead-letter", "wait")
    assert DEFAULT_LLM_FAILURE == "dead-letter" == CascadeConfig().on_llm_failure
    with pytest.raises(ConfigurationError, match="on_llm_failure"):
        CascadeConfig(on_llm_failure="shrug").validate()
    assert CascadeConfig.from_dict({"on_llm_failure": "wait"}).on_llm_failure == "wait"


def test_degrade_answers_with_an_earlier_stage_and_learns_nothing_from_it() -> None:
    cascade = make(ScriptedLLM(failing={"1", "3"}), "degrade")
    answered = ask(cascade, TEXTS)
    by_id = {d.event_id: d for d in answered.decisions}
    for event_id in ("1", "3"):
        decision = by_id[event_id]
        assert decision.degraded and decision.label in TASK.labels.names
        assert decision.stage == "hashed" and decision.stage_index == 0
        assert decision.error == TIMEOUT  # why it is degraded
        assert decision.path == ["hashed", "scripted"]
    for event_id in ("0", "2"):
        assert not by_id[event_id].degraded and by_id[event_id].stage == "scripted"
    assert sorted(d.event.id for d in answered.demonstrations) == ["0", "2"]


def test_degrade_picks_the_stage_least_likely_to_disagree_with_the_llm() -> None:
    from streamcascade.models.stages.hashed_text import HashedTextStage

    stages = [HashedTextStage(TASK.labels, name="small"), HashedTextStage(TASK.labels, name="big")]
    two = Cascade(TASK, stages, ScriptedLLM(failing={"0"}),
                  CascadeConfig(stages=["small", "big"], warmup=10_000, on_llm_failure="degrade"))

    def says(p_wrong: float) -> Any:
        return lambda x: np.full(len(x), p_wrong)

    # The second stage's policy says it rarely disagrees with the LLM, the first's that it often
    # does: the second answers; then the other way round.
    two.policies[0].defer_proba_of = says(0.9)  # type: ignore[method-assign]
    two.policies[1].defer_proba_of = says(0.1)  # type: ignore[method-assign]
    (decision,) = ask(two, ["a great film"]).decisions
    assert decision.degraded and (decision.stage, decision.stage_index) == ("big", 1)
    two.policies[1].defer_proba_of = says(0.95)  # type: ignore[method-assign]
    (decision,) = ask(two, ["a great film"]).decisions
    assert decision.degraded and (decision.stage, decision.stage_index) == ("small", 0)


def test_dead_letter_leaves_the_event_without_an_answer() -> None:
    cascade = make(ScriptedLLM(failing={"1"}), "dead-letter")
    decisions = ask(cascade, TEXTS).decisions
    assert decisions[1].label is None and decisions[1].error == TIMEOUT
    assert not decisions[1].degraded and decisions[1].stage == "scripted"
    assert all(d.label is not None for i, d in enumerate(decisions) if i != 1)


def test_wait_asks_again_until_the_endpoint_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cascade_module, "WAIT_BACKOFF_S", (0.01, 0.05))
    llm = ScriptedLLM(failing={"1", "2"}, fail_times=3)
    cascade = make(llm, "wait")
    decisions = ask(cascade, TEXTS).decisions
    assert [d.label for d in decisions] == ["positive", "negative", "positive", "negative"]
    assert not any(d.degraded for d in decisions)
    assert llm.asked == {"0": 1, "1": 4, "2": 4, "3": 1}  # only the failed ones, again
    assert llm.calls == 4


def test_wait_does_not_wait_for_an_answer_that_came_and_names_no_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cascade_module, "WAIT_BACKOFF_S", (0.01, 0.05))
    wrong = LLMAnswer(None, 100.0, "answer outside the labels: 'maybe'", raw="maybe")
    llm = ScriptedLLM(failing={"1"}, failure=wrong)
    decisions = ask(make(llm, "wait"), TEXTS).decisions
    assert decisions[1].label is None and llm.calls == 1


def test_a_hedged_answer_is_charged_for_both_calls() -> None:
    llm = ScriptedLLM(answer_calls=2)
    (decision,) = ask(make(llm), ["a great film"]).decisions
    hashed_cost = decision.cost - 2 * 100.0
    (single,) = ask(make(ScriptedLLM()), ["a great film"]).decisions
    assert single.cost == pytest.approx(hashed_cost + 100.0)


@pytest.fixture
def rows(tmp_path: Path) -> list[StreamRow]:
    return read_stream(write_stream(tmp_path / "imdb.jsonl", sentiment_stream(120, seed=3)))


def test_replay_reports_degraded_unanswered_and_lost(rows: list[StreamRow]) -> None:
    failing = {r.id for r in rows[::4]}  # every event goes to the LLM: it is warming up
    degraded = replay(rows, TASK, make(ScriptedLLM(failing=failing), "degrade"), progress=False)
    dead = replay(rows, TASK, make(ScriptedLLM(failing=failing), "dead-letter"), progress=False)
    assert degraded["unanswered"] == 0 and degraded["degraded"] == len(failing)
    assert dead["unanswered"] == len(failing) and dead["degraded"] == 0
    assert degraded["lost"] == dead["lost"] == 0
    assert degraded["hedged"] is None and degraded["timeouts"] is None  # this LLM cannot say


def test_a_replay_answers_micro_batches_concurrently(rows: list[StreamRow]) -> None:
    timings = {}
    results = {}
    for in_flight in (1, 6):
        llm = ScriptedLLM(delay=0.05)
        started = time.perf_counter()
        results[in_flight] = replay(rows, TASK, make(llm, warmup=20), batch_size=4,
                                    in_flight=in_flight, progress=False)
        timings[in_flight] = time.perf_counter() - started
    assert results[6]["n"] == len(rows) and results[6]["lost"] == 0
    assert timings[6] < timings[1] / 2.5  # 30 batches of 50 ms: 1.5 s, and about a sixth
    assert abs(results[6]["quality"] - results[1]["quality"]) < 0.15


def test_in_flight_must_be_positive(rows: list[StreamRow]) -> None:
    with pytest.raises(ConfigurationError, match="in_flight"):
        replay(rows, TASK, make(ScriptedLLM()), in_flight=0, progress=False)


def test_a_cascade_reports_its_llms_health_when_the_llm_has_one() -> None:
    from streamcascade.models.llm.base import ReportsHealth
    from streamcascade.models.llm.openai import OpenAIChatLLM

    assert make(ScriptedLLM()).health() == {}
    live = build_cascade(TASK, OpenAIChatLLM("http://127.0.0.1:9/v1", "m", TASK),
                         CascadeConfig())
    assert isinstance(live, ReportsHealth)
    assert live.health()["breaker_state"] == "closed" and live.health()["hedges"] == 0
