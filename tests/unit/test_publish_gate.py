"""The publish gate: held-back demonstrations, the sign test, and what "clearly worse" is."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from cascade_streams import sentiment_stream, write_stream

from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Demonstration, Event
from streamcascade.operators.poison_guard import Opinion
from streamcascade.operators.publish_gate import Comparison, PublishGate, sign_test_p


def demo(i: int, label: int, source: str = "llm") -> Demonstration:
    return Demonstration(Event(str(i), f"text {i}"), label, source)


class PreviewOf:
    """A model that answers each event id with a fixed label; counts what it was asked."""

    def __init__(self, labels: dict[str, int]) -> None:
        self.labels = labels
        self.asked = 0

    def __call__(self, events: Sequence[Event]) -> list[Opinion]:
        self.asked += len(events)
        return [Opinion(self.labels[e.id], 0.9) for e in events]


def answering(labels: dict[str, int]) -> PreviewOf:
    return PreviewOf(labels)


def test_sign_test_is_exact() -> None:
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 0) == pytest.approx(1 / 8)
    assert sign_test_p(2, 1) == pytest.approx(4 / 8)  # P(X >= 2), X ~ Bin(3, 1/2)
    assert sign_test_p(30, 10) == pytest.approx(0.00111, abs=1e-5)
    assert sign_test_p(500, 500) > 0.5  # large samples do not overflow


def test_holding_back_is_by_event_and_bounded() -> None:
    gate = PublishGate(share=0.25, capacity=10)
    demos = [demo(i, 0) for i in range(400)] + [demo(i, 1, "ground_truth") for i in range(400)]
    to_learn = gate.hold(demos)
    # Every label of an event goes the same way, and about a quarter of events are held.
    chosen = {str(i) for i in range(400) if gate.holds_back(str(i))}
    assert 70 < len(chosen) < 130
    # The rest are learned at once, and the held-back ones pushed out by newer ones after them.
    assert to_learn[:800 - 2 * len(chosen)] == [d for d in demos if d.event.id not in chosen]
    still_held = gate.release_all()
    assert len(still_held) == 10
    assert sorted(to_learn[800 - 2 * len(chosen):] + still_held, key=demos.index) == [
        d for d in demos if d.event.id in chosen]
    assert PublishGate(share=0.25).holds_back("17") == gate.holds_back("17")  # stable
    assert not any(PublishGate(share=0.0).holds_back(str(i)) for i in range(100))


def held_gate(n: int, share: float = 1.0, **rules: float) -> PublishGate:
    gate = PublishGate(share=share, capacity=1000, **rules)  # type: ignore[arg-type]
    gate.hold([demo(i, 1) for i in range(n)])
    return gate


def test_a_clearly_worse_candidate_is_refused_with_the_reason() -> None:
    gate = held_gate(100)
    gate.rebase(answering({str(i): 1 for i in range(100)}))  # the reference: all right
    worse = answering({str(i): 0 if i < 30 else 1 for i in range(100)})
    verdict = gate.judge(worse)
    assert not verdict.publish
    assert verdict.comparisons == (Comparison("llm", 100, 30, 0),)
    assert "llm: 30 worse, 0 better of 100 (net +30.0 points against" in verdict.reason


def test_a_better_or_slightly_different_candidate_is_published() -> None:
    gate = held_gate(100)
    reference = {str(i): 0 if i < 20 else 1 for i in range(100)}
    gate.rebase(answering(reference))
    assert gate.judge(answering({str(i): 1 for i in range(100)})).publish  # better
    # Different on 12 events, 7 of them to its loss: not significant.
    mixed = dict(reference) | {str(i): 0 for i in range(20, 27)} | {str(i): 1 for i in range(5)}
    verdict = gate.judge(answering(mixed))
    assert verdict.publish and verdict.comparisons[0].worse == 7


def test_significant_but_small_losses_are_not_clearly_worse() -> None:
    gate = held_gate(1000, min_loss=0.03)
    gate.rebase(answering({str(i): 1 for i in range(1000)}))
    # 25 worse of 1000: very significant, but 2.5 points.
    verdict = gate.judge(answering({str(i): 0 if i < 25 else 1 for i in range(1000)}))
    assert verdict.publish
    assert verdict.comparisons[0].p_value < 1e-6


def test_too_small_a_sample_is_not_judged() -> None:
    gate = held_gate(20, min_sample=30)
    gate.rebase(answering({str(i): 1 for i in range(20)}))
    verdict = gate.judge(answering({str(i): 0 for i in range(20)}))
    assert verdict.publish and "too few" in verdict.reason
    empty = PublishGate(share=1.0)
    assert empty.judge(answering({})).publish


def test_sources_are_judged_apart() -> None:
    """Forged ground truth agrees with itself: the candidate it poisoned looks better on it, and is
    clearly worse against the LLM."""
    gate = PublishGate(share=1.0, capacity=1000)
    gate.hold([demo(i, 1) for i in range(60)] + [demo(i, 0, "ground_truth") for i in range(60)])
    gate.rebase(answering({str(i): 1 for i in range(60)}))
    poisoned = answering({str(i): 0 for i in range(60)})
    verdict = gate.judge(poisoned)
    assert not verdict.publish
    by_source = {c.source: c for c in verdict.comparisons}
    assert by_source["ground_truth"].better == 60 and by_source["llm"].worse == 60
    assert "ground_truth" not in verdict.reason


def test_only_demonstrations_with_a_reference_answer_are_judged() -> None:
    gate = held_gate(50)
    gate.rebase(answering({str(i): 1 for i in range(50)}))
    gate.hold([demo(i, 1) for i in range(50, 100)])  # came after the reference was taken
    everything_wrong = answering({str(i): 0 for i in range(100)})
    verdict = gate.judge(everything_wrong)
    assert verdict.comparisons[0].n == 50
    # While the model is still the published one, the newcomers get their reference answers.
    preview = answering({str(i): 1 for i in range(100)})
    gate.fill(preview)
    assert preview.asked == 50
    assert gate.judge(everything_wrong).comparisons[0].n == 100


def test_release_all_hands_back_every_held_demonstration() -> None:
    gate = held_gate(7)
    assert [d.event.id for d in gate.release_all()] == [str(i) for i in range(7)]
    assert len(gate) == 0
    assert math.isnan(Comparison("llm", 0, 0, 0).loss)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        PublishGate(share=1.5)
    with pytest.raises(ValueError):
        PublishGate(capacity=0)


def test_a_cascade_previews_without_changing_anything(tmp_path: Path) -> None:
    task = TASKS["imdb"]
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(300, hard_share=0.1, seed=3))
    rows = read_stream(path)
    cascade = build_cascade(task, RecordedLLM(path, "oracle", task), CascadeConfig(warmup=20))
    events = [Event(r.id, r.text) for r in rows]
    for start in range(0, 200, 50):
        answer = asyncio.run(cascade.answer(events[start:start + 50]))
        cascade.learn(answer.demonstrations)
    before = cascade.state_bytes()
    opinions = cascade.preview(events[200:])
    assert cascade.state_bytes() == before
    assert cascade.preview([]) == []
    right = sum(label == task.labels.index(str(r.label))
                for (label, _), r in zip(opinions, rows[200:], strict=True))
    assert right >= 85  # it learned the easy events
    assert all(0.5 <= confidence <= 1.0 for _, confidence in opinions)
