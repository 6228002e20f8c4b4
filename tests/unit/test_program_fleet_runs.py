"""A program's runs travel with their ground truth: the worker that learns need not be the one
that answered, and its policies still learn from the answer's draws."""

from __future__ import annotations

import asyncio
import json

from program_synthetic import LABELS, compiled, events, gate_program

from streamcascade.models.programs import CompiledProgram
from streamcascade.models.types import SOURCE_GROUND_TRUTH, Demonstration, Event


def answered_elsewhere(answerer: CompiledProgram, learner: CompiledProgram,
                       stream: list[tuple[Event, int]], hand_over: bool) -> None:
    """``answerer`` answers; ``learner`` learns the ground truth, with the runs (as JSON, the
    way they travel on the demonstrations topic) if ``hand_over``."""
    for lo in range(0, len(stream), 8):
        part = stream[lo:lo + 8]
        asyncio.run(answerer.answer([e for e, _ in part]))
        for event, _ in part:
            run = answerer.run_record(event.id)
            assert run is not None
            if hand_over:
                assert learner.adopt_run(event, json.loads(json.dumps(run)))
        learner.learn([Demonstration(e, y, SOURCE_GROUND_TRUTH) for e, y in part])


def test_the_learner_rewards_the_policies_from_another_workers_runs() -> None:
    stream = events(160, seed=4)
    answerer, learner = compiled(gate_program(), warmup=0), compiled(gate_program(), warmup=0)
    answered_elsewhere(answerer, learner, stream, hand_over=True)
    assert learner.n_rewarded == len(stream) and learner.n_learned == len(stream)
    assert learner.policies and all(p.n_updates > 0 for p in learner.policies.values())
    # Without the runs only the stages learn: no policy hears of an answer.
    alone = compiled(gate_program(), warmup=0)
    answered_elsewhere(compiled(gate_program(), warmup=0), alone, stream, hand_over=False)
    assert alone.n_learned == len(stream) and alone.n_rewarded == 0 and not alone.policies


def test_a_run_that_does_not_fit_the_program_is_not_held() -> None:
    model = compiled(gate_program(), warmup=0)
    other = compiled(gate_program(), warmup=0)
    event = Event("e", "a:x:1")
    asyncio.run(other.answer([event]))
    run = other.run_record(event.id)
    assert run is not None and run["calls"]
    assert other.run_record("never answered") is None
    bad_arm = json.loads(json.dumps(run))
    bad_arm["calls"][0]["arm"] = 7
    not_a_module = json.loads(json.dumps(run))
    not_a_module["calls"][0]["module"] = "nope"
    not_a_distribution = json.loads(json.dumps(run))
    not_a_distribution["calls"][0]["behaviour"] = [5.0, -4.0]
    bad_final = dict(run, final=len(LABELS))
    for record in (bad_arm, not_a_module, not_a_distribution, bad_final, {"calls": 3}):
        assert not model.adopt_run(event, record)
    model.learn([Demonstration(event, 0, SOURCE_GROUND_TRUTH)])
    assert model.n_rewarded == 0  # nothing was held: only the stages learned
    # A run the worker holds itself wins over one handed over.
    assert other.adopt_run(event, bad_arm)
    other.learn([Demonstration(event, 0, SOURCE_GROUND_TRUTH)])
    assert other.n_rewarded == 1
