"""The deferral policy: learned by imitation, it defers exactly where its stage is wrong."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from cascade_streams import sentiment_stream, write_stream

from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.replay import replay
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event


def test_policy_learns_the_experts_action() -> None:
    rng = np.random.default_rng(0)
    policy = DeferralPolicy(n_classes=3)
    # The stage is right when its top probability is high and wrong when it is low.
    for _ in range(400):
        top = rng.uniform(0.34, 1.0, size=8)
        rest = (1 - top) / 2
        proba = np.column_stack([top, rest, rest])
        policy.learn(proba, np.full(8, 100.0), top < 0.6)
    confident = np.array([[0.95, 0.025, 0.025]])
    unsure = np.array([[0.45, 0.3, 0.25]])
    assert policy.defer_proba(confident, np.array([100.0]))[0] < 0.1
    assert policy.defer_proba(unsure, np.array([100.0]))[0] > 0.9


def test_policy_is_calibrated_on_a_noisy_expert() -> None:
    """Where the stage is wrong 30% of the time, P(defer) settles near 0.3."""
    rng = np.random.default_rng(1)
    policy = DeferralPolicy(n_classes=2, learning_rate=0.05)
    proba = np.array([[0.8, 0.2]])
    for _ in range(4000):
        policy.learn(proba, np.array([50.0]), np.array([rng.random() < 0.3]))
    assert abs(policy.defer_proba(proba, np.array([50.0]))[0] - 0.3) < 0.06


def test_predicting_never_learns() -> None:
    policy = DeferralPolicy(n_classes=2)
    policy.learn(np.array([[0.9, 0.1]]), np.array([5.0]), np.array([True]))
    before = policy.weights.copy()
    policy.defer_proba(np.array([[0.6, 0.4]]), np.array([5.0]))
    assert np.array_equal(before, policy.weights)


def test_paper_calibration_makes_the_policy_cautious() -> None:
    plain, cautious = DeferralPolicy(2), DeferralPolicy(2, calibration=0.4)
    proba = np.array([[0.9, 0.1]])
    for _ in range(500):
        for policy in (plain, cautious):
            policy.learn(proba, np.array([10.0]), np.array([False]))
    assert cautious.defer_proba(proba, np.array([10.0]))[0] > 0.3 > plain.defer_proba(
        proba, np.array([10.0]))[0]


def test_cascade_defers_exactly_where_its_stage_is_wrong(tmp_path: Path) -> None:
    """On a generated stream, easy events are answered early and coin-flip events deferred."""
    rows = sentiment_stream(1500, hard_share=0.3, seed=3)
    path = write_stream(tmp_path / "imdb.jsonl", rows)
    task = TASKS["imdb"]
    llm = RecordedLLM(path, "oracle", task)
    # Budget enough LLM calls for the hard third: the policy must pick exactly those.
    cascade = build_cascade(task, llm, CascadeConfig(target_llm_share=0.33))
    stream = read_stream(path)
    replay(stream[:1200], task, cascade, progress=False)
    # Judge the learned policy on the rest, without exploration and without learning.
    cascade.learner.exploration = 0.0
    decisions = asyncio.run(cascade.answer([Event(r.id, r.text) for r in stream[1200:]])).decisions
    hard = np.array([bool(r["hard"]) for r in rows[1200:]])
    # Deferred by the policy (an audited early answer also ends at the LLM, but as an audit).
    deferred = np.array([d.path[-1] == llm.name for d in decisions])
    assert deferred[hard].mean() > 0.85
    assert deferred[~hard].mean() < 0.05
    early = [d for d, h in zip(decisions, hard, strict=True) if not h and d.stage != llm.name]
    assert len(early) > 0.8 * (~hard).sum()
    truth = {r.id: r.label for r in stream[1200:]}
    assert all(d.label == truth[d.event_id] for d in early)
