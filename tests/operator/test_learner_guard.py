"""The fleet learner's guard with a real cascade (hashed stage, recorded GPT-3.5 answers), no
broker: each event teaches once per source, the seen-set travels with the state, and a poisoned
version is not published."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streamcascade.models.cascade import Cascade, CascadeConfig, build_cascade
from streamcascade.models.datasets import StreamRow, read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event
from streamcascade.operators.fleet_learner import FleetLearner
from streamcascade.operators.learning_guard import SEEN_META_KEY, LearningGuard, preview_of
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.publish_gate import PublishGate
from streamcascade.operators.state_store import StateSigner

#: The bundled HateSpeech stream, with its recorded GPT-3.5 answers.
DATA = Path(__file__).resolve().parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"
LLM = "gpt-3.5-turbo-1106"
TASK = TASKS["hatespeech"]
SIGNER = StateSigner("learner-guard-tests-signing-key")


@pytest.fixture(scope="module")
def recorded() -> RecordedLLM:
    return RecordedLLM(DATA, LLM, TASK)


@pytest.fixture(scope="module")
def rows() -> list[StreamRow]:
    return read_stream(DATA, 1400)


def make_cascade(llm: RecordedLLM) -> Cascade:
    return build_cascade(TASK, llm,
                         CascadeConfig(stages=["hashed"], warmup=50), hashed={"n_features": 2**14})


def value(row: StreamRow, label: str | None = None, source: str = "ground_truth") -> bytes:
    return json.dumps({"id": row.id, "text": row.text, "label": label or row.label,
                       "source": source}).encode()


def count(metric: Any, *labels: str) -> float:
    return float((metric.labels(*labels) if labels else metric)._value.get())


class Published(list[bytes]):
    async def __call__(self, blob: bytes) -> None:
        self.append(blob)


class Acks(list[Any]):
    async def __call__(self, handle: Any) -> None:
        self.append(handle)


def learner_of(cascade: Cascade, published: Published, **guard: Any) -> FleetLearner:
    return FleetLearner(cascade, SIGNER, published, OperatorMetrics(cascade.stage_names),
                        publish_interval_s=3600, learn_slice=500,
                        guard=LearningGuard(TASK.labels, preview_of(cascade), **guard))


async def test_a_flood_of_one_id_teaches_once(recorded: RecordedLLM,
                                              rows: list[StreamRow]) -> None:
    wrong = "hate" if rows[1].label == "noHate" else "noHate"
    flooded, clean = make_cascade(recorded), make_cascade(recorded)
    learner = learner_of(flooded, Published(), gate=PublishGate(share=0))
    reference = learner_of(clean, Published(), gate=PublishGate(share=0))
    for lo in range(0, 400, 100):
        batch = [value(r) for r in rows[lo:lo + 100]]
        await reference.learn(batch)
        assert await learner.learn(batch + [value(rows[1], wrong)] * 2500) == 100
    metrics = learner.metrics
    assert count(metrics.demonstrations, "ground_truth") == 400
    assert count(metrics.demonstrations_skipped, "conflicting") == 10_000
    assert count(metrics.demonstrations_skipped, "duplicate") == 0
    events = [Event(r.id, r.text) for r in rows[400:]]
    assert flooded.preview(events) == clean.preview(events)  # the same model


async def test_the_seen_set_travels_with_the_published_state(recorded: RecordedLLM,
                                                             rows: list[StreamRow]) -> None:
    """A learner that takes over reads again from the last commit: what the published state
    already includes is dropped as a duplicate, the rest is learned."""
    published, acks = Published(), Acks()
    first = learner_of(make_cascade(recorded), published, gate=PublishGate(share=0))
    await first.learn([value(r) for r in rows[:30]])
    assert await first.maybe_publish(acks, force=True)
    snapshot = SIGNER.verify(published[-1])
    assert isinstance(snapshot.meta[SEEN_META_KEY], str)

    second_model = make_cascade(recorded)
    second = learner_of(second_model, Published(), gate=PublishGate(share=0))
    second_model.load_state(snapshot.payload)
    second.state_replaced(snapshot.payload, snapshot.meta)
    assert await second.learn([value(r) for r in rows[20:40]]) == 10
    assert count(second.metrics.demonstrations_skipped, "duplicate") == 10
    assert count(second.metrics.demonstrations, "ground_truth") == 10
    # A state without a seen-set (an older worker's): nothing is known to be included.
    third = learner_of(make_cascade(recorded), Published(), gate=PublishGate(share=0))
    third.state_replaced(snapshot.payload, {})
    assert await third.learn([value(r) for r in rows[:5]]) == 5


async def answer_and_learn(learner: FleetLearner, rows: list[StreamRow], flip: bool = False,
                           truth_later: bool = False) -> None:
    """Answer ``rows`` with the learner's model, 50 at a time, learning the LLM's answers and the
    ground truth (flipped: the wrong label) of every row; with ``truth_later``, the ground truth
    comes after all are answered, in learner batches of 500 (a burst, as a worker's learner
    reads it)."""
    model = learner.model
    later: list[bytes] = []
    for lo in range(0, len(rows), 50):
        batch = rows[lo:lo + 50]
        answer = await model.answer([Event(r.id, r.text) for r in batch])
        records = [value(StreamRow(d.event.id, d.event.text), TASK.labels.name(d.label), d.source)
                   for d in answer.demonstrations]
        truth = [value(r, ("hate" if r.label == "noHate" else "noHate") if flip else r.label)
                 for r in batch]
        if truth_later:
            later += truth
            truth = []
        await learner.learn(records + truth)
    for lo in range(0, len(later), 500):
        await learner.learn(later[lo:lo + 500])


async def test_a_poisoning_burst_is_not_published_and_the_learner_goes_back(
        recorded: RecordedLLM, rows: list[StreamRow],
        caplog: pytest.LogCaptureFixture) -> None:
    cascade = make_cascade(recorded)
    published, acks = Published(), Acks()
    learner = learner_of(cascade, published, gate=PublishGate(share=0.3))
    metrics = learner.metrics
    # Ordinary learning: every version is judged, and published.
    await answer_and_learn(learner, rows[:600])
    assert await learner.maybe_publish(acks, force=True)
    await answer_and_learn(learner, rows[600:900])
    assert await learner.maybe_publish(acks, force=True)
    assert len(published) == 2 and learner.last_verdict.publish
    assert {c.source for c in learner.last_verdict.comparisons} == {"ground_truth", "llm"}
    assert math.isnan(count(metrics.quality))  # (no answer was scored here)
    version = cascade.version
    served = cascade.preview([Event(r.id, r.text) for r in rows[1000:]])
    # The burst: the wrong label for 300 events, and one event's wrong label 2,000 times.
    held = [SimpleNamespace(message=SimpleNamespace(tp="demonstrations-0", offset=o))
            for o in range(3)]
    with caplog.at_level(logging.WARNING, logger="streamcascade"):
        await answer_and_learn(learner, rows[900:1200], flip=True, truth_later=True)
        await learner.learn([value(rows[0], "hate" if rows[0].label == "noHate" else "noHate")]
                            * 2000)
        learner.hold(held)
        assert cascade.version > version
        assert await learner.maybe_publish(acks, force=True)
    assert len(published) == 2  # not published
    assert not learner.last_verdict.publish
    # The learner serves the published version again, and acked what it judged.
    assert cascade.version == version == learner.published_version
    assert cascade.preview([Event(r.id, r.text) for r in rows[1000:]]) == served
    assert acks[-3:] == held
    messages = [r.getMessage() for r in caplog.records]
    assert any("possible poisoning" in m for m in messages)
    refused = [m for m in messages if "is not published" in m]
    assert len(refused) == 1 and f"The fleet keeps version {version}" in refused[0]
    assert "clearly worse than the published version on held-back" in refused[0]
    assert count(metrics.states_rejected) == 1
    assert count(metrics.poisoning_alarms) >= 1
    assert count(metrics.feedback_contradictions) > 20
    assert count(metrics.publish_gate_loss, "llm") > 0.1
    assert count(metrics.demonstrations_skipped, "refused_version") > 200  # (30% held back)
    assert count(metrics.demonstrations_skipped, "conflicting") == 2000
