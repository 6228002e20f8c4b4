"""The operator's logic with a real cascade (hashed stage, recorded GPT-3.5 answers), no broker.

What the Faust agents add around it (reading, writing, acking) is tested against a real broker in
``tests/integration/test_operator_*.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.tasks import TASKS
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.decision_log import DecisionLog
from streamcascade.operators.fleet_learner import FleetLearner
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.operator import CascadeOperator, InRecord, Outgoing
from streamcascade.operators.state_store import StateSigner

DATA = Path(__file__).resolve().parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"
LLM = "gpt-3.5-turbo-1106"
TASK = TASKS["hatespeech"]
KEY = "operator-tests-signing-key"


def make_operator(records: Path, **config: Any) -> CascadeOperator:
    cascade = build_cascade(TASK, RecordedLLM(records, LLM, TASK),
                            CascadeConfig(stages=["hashed"], **config),
                            hashed={"n_features": 2**14})
    metrics = OperatorMetrics(["hashed", LLM])
    return CascadeOperator(cascade, RecordCodec(max_bytes=2000), DecisionLog(ttl_s=30), metrics)


def record(value: bytes | None, offset: int, partition: int = 1, topic: str = "events") -> InRecord:
    return InRecord(b"k%d" % offset, value, SourcePosition(topic, partition, offset),
                    time.monotonic(), handle=f"h{offset}")


def demonstration_records(rows: Any) -> list[bytes]:
    """Demonstration records (the learner's input) of ``rows``, labelled with ground truth."""
    return [json.dumps({"id": r.id, "text": r.text, "label": r.label,
                        "source": "ground_truth"}).encode() for r in rows]


def logged_learning(op: CascadeOperator) -> list[str]:
    """A timeline that gets ``learn <n>`` for every batch of ``n`` the cascade learns."""
    timeline: list[str] = []
    learn = op.model.learn

    def logged_learn(batch: Any) -> None:
        timeline.append(f"learn {len(batch)}")
        learn(batch)

    op.model.learn = logged_learn  # type: ignore[method-assign]
    return timeline


def by_topic(out: list[Outgoing], topic: str) -> list[dict[str, Any]]:
    return [json.loads(o.value) for o in out if o.topic == topic]


async def test_every_record_gets_an_output_or_a_dead_letter(records_file: Path) -> None:
    op = make_operator(records_file)
    codec = RecordCodec()
    rows = read_stream(records_file, 20)
    batch = [record(codec.encode_event_fields(r.id, r.text), i) for i, r in enumerate(rows)]
    batch += [record(b"{oops", 100), record(b'{"id": "x1", "text": ""}', 101),
              record(json.dumps({"id": "x2", "text": "y" * 3000}).encode(), 102)]
    out = await op.handle_events(batch)
    outputs = by_topic(out, "output")
    letters = by_topic(out, "dlq")
    # Rows 5 and 6 have no recorded answer: during warm-up they reach the LLM, which fails.
    assert sorted(o["id"] for o in outputs) == sorted(r.id for r in rows if r.id not in ("5", "6"))
    assert sorted((d["reason"], d["offset"]) for d in letters) == [
        (dl.LLM_FAILED, 5), (dl.LLM_FAILED, 6), (dl.MALFORMED_JSON, 100), (dl.MISSING_TEXT, 101),
        (dl.OVERSIZED, 102)]
    for o in outputs:
        assert set(o) == {"id", "label", "stage", "confidence", "cost", "model_version",
                          "latency_ms"}
        assert o["label"] in TASK.labels.names and o["latency_ms"] >= 0
    # Outputs are keyed by event id; the LLM's answers go to feedback on the input's partition.
    assert all(o.key == o.value.split(b'"id":"')[1].split(b'"')[0] for o in out
               if o.topic == "output")
    feedback = [o for o in out if o.topic == "feedback"]
    assert len(feedback) == len(outputs)
    assert {o.partition for o in feedback} == {1}
    assert {json.loads(o.value)["source"] for o in feedback} == {"llm"}
    assert op.metrics.dead_letters.labels(dl.LLM_FAILED)._value.get() == 2
    assert op.metrics.llm_calls._value.get() == 20  # warm-up: all 20 asked, 2 calls failed


async def test_feedback_joins_before_or_after_and_bad_labels_are_dead_letters(
    records_file: Path,
) -> None:
    op = make_operator(records_file)
    codec = RecordCodec()
    rows = read_stream(records_file, 4)
    early = record(codec.encode_feedback(rows[3].id, rows[3].label or "", "ground_truth"), 0,
                   topic="fb")
    bad = record(b'{"id": "0", "label": "offensive"}', 1, topic="fb")
    result = op.handle_feedback([early, bad])
    assert [json.loads(o.value)["reason"] for o in result.outgoing] == [dl.UNKNOWN_LABEL]
    assert result.ack == [bad.handle]  # the early feedback stays un-acked: it waits
    out = await op.handle_events(
        [record(codec.encode_event_fields(r.id, r.text), 10 + i) for i, r in enumerate(rows)])
    demos = by_topic(out, "demonstrations")
    assert [(d["id"], d["source"]) for d in demos] == [(rows[3].id, "ground_truth")]
    assert demos[0]["text"] == rows[3].text
    # The waiting feedback is handed back, to be acked once its demonstration is written.
    assert op.take_joined_feedback() == [early.handle]
    assert op.take_joined_feedback() == []
    answered = {o["id"]: o["label"] for o in by_topic(out, "output")}
    late = record(codec.encode_feedback(rows[0].id, rows[0].label or "", "ground_truth"), 2,
                  topic="fb")
    result = op.handle_feedback([late])
    assert [json.loads(o.value)["id"] for o in result.outgoing] == [rows[0].id]
    assert result.ack == [late.handle]
    right = [answered[r.id] == r.label for r in (rows[3], rows[0])]
    assert op.metrics.quality._value.get() == sum(right) / 2


async def test_feedback_for_an_event_that_never_comes_is_dead_lettered(records_file: Path) -> None:
    op = make_operator(records_file)
    op.decision_log.ttl_s = 0.05
    orphan = record(b'{"id": "ghost", "label": "hate"}', 7, topic="fb")
    assert op.handle_feedback([orphan]).ack == []
    time.sleep(0.1)
    result = op.handle_feedback([])
    [letter] = by_topic(result.outgoing, "dlq")
    assert (letter["reason"], letter["topic"], letter["offset"]) == (dl.FEEDBACK_UNMATCHED, "fb", 7)
    assert result.ack == [orphan.handle]


async def test_learner_publishes_signed_state_that_another_worker_loads(records_file: Path) -> None:
    op = make_operator(records_file, warmup=20)
    codec = RecordCodec()
    rows = read_stream(records_file, 200)
    out = await op.handle_events(
        [record(codec.encode_event_fields(r.id, r.text), i) for i, r in enumerate(rows)])
    demos = demonstration_records(rows)
    published: list[bytes] = []
    acked: list[Any] = []

    async def publish(blob: bytes) -> None:
        published.append(blob)

    async def ack(handle: Any) -> None:
        acked.append(handle)

    a, b, c = (SimpleNamespace(message=SimpleNamespace(tp="d", offset=o)) for o in range(3))
    signer = StateSigner(KEY)
    learner = FleetLearner(op.model, signer, publish, op.metrics, publish_interval_s=3600)
    assert await learner.learn(demos[:100]) == 100
    learner.hold([a, b])
    assert await learner.maybe_publish(ack)  # the first publish is due at once
    assert acked == [a, b]
    await learner.learn([*demos[100:], b"not a demonstration"])
    skipped = op.metrics.demonstrations_skipped
    assert skipped.labels("malformed")._value.get() == 1  # skipped, and counted
    learner.hold([c])
    assert not await learner.maybe_publish(ack)  # not due: the demonstrations stay un-acked
    assert acked == [a, b]
    assert await learner.maybe_publish(ack, force=True)
    assert acked == [a, b, c]
    versions = [signer.verify(b).version for b in published]
    assert versions == sorted(versions) and versions[-1] == op.model.version > 0
    broken = FleetLearner(make_operator(records_file).model, signer, publish, op.metrics)
    broken.model.learn = None  # type: ignore[method-assign]  # a step that raises
    assert await broken.learn(demos[:3]) == 0
    assert skipped.labels("learning_failed")._value.get() == 3

    other = make_operator(records_file, warmup=20)
    other.model.load_state(signer.verify(published[-1]).payload)
    assert other.model.version == op.model.version
    texts = [r.text for r in rows[:50]]
    for a, b in zip(op.model.stages, other.model.stages, strict=True):
        assert (a.predict_proba(texts) == b.predict_proba(texts)).all()
    assert out  # the batch was answered


async def test_demonstrations_read_again_after_a_rebalance_are_not_learned_twice(
        records_file: Path) -> None:
    """A rebalance sends the demonstrations partition back to its last commit: a learner that
    keeps it reads again what it learned (and has not published) and learns each record once.
    One that loses it drops its held records for the next owner and stops publishing until it
    learns again; once another worker's state replaces its model, it learns everything it
    reads."""
    op = make_operator(records_file, warmup=20)
    rows = read_stream(records_file)[:40]
    demos = demonstration_records(rows)
    published: list[bytes] = []

    async def publish(blob: bytes) -> None:
        published.append(blob)

    learner = FleetLearner(op.model, StateSigner(KEY), publish, op.metrics, publish_interval_s=3600)
    tp = ("demonstrations", 0)
    assert await learner.learn(demos[:20], [(tp, o) for o in range(20)]) == 20
    version = op.model.version
    # Read again from offset 10 (the last commit), and on to 30.
    assert await learner.learn(demos[10:30], [(tp, o) for o in range(10, 30)]) == 10
    skipped = op.metrics.demonstrations_skipped.labels("already_learned")
    assert skipped._value.get() == 10
    assert op.metrics.demonstrations.labels("ground_truth")._value.get() == 30
    assert op.model.version > version
    held = [SimpleNamespace(message=SimpleNamespace(tp=t, offset=1)) for t in (tp, "other")]
    learner.hold(held)
    assert learner.forget({tp}) == 1
    acked: list[Any] = []

    async def ack(handle: Any) -> None:
        acked.append(handle)

    assert not await learner.maybe_publish(ack, force=True)  # no longer the learner
    assert published == [] and acked == []
    assert await learner.learn(demos[30:31], [(tp, 30)]) == 1  # the partition is back
    assert await learner.maybe_publish(ack, force=True)
    assert len(published) == 1 and acked == held[1:]
    learner.state_replaced()  # another worker's state: relearn what it reads
    assert await learner.learn(demos[:5], [(tp, o) for o in range(5)]) == 5


async def test_a_learner_whose_model_is_replaced_learns_again_what_it_would_ack(
        records_file: Path) -> None:
    """Two learners overlap for a moment when the demonstrations partition moves: a newer state
    may replace the model of a worker that holds demonstrations un-acked, or is learning a batch.
    It learns them again rather than ack them without their being in the model; it never acks a
    record read before a revoke; and a revoke while a state is being sealed stops the publish."""
    from streamcascade.operators.acks import Revocations

    op = make_operator(records_file, warmup=20)
    rows = read_stream(records_file)[:20]
    demos = demonstration_records(rows)
    learned = op.metrics.demonstrations.labels("ground_truth")
    timeline = logged_learning(op)
    published: list[bytes] = []

    async def publish(blob: bytes) -> None:
        published.append(blob)

    revocations = Revocations()
    learner = FleetLearner(op.model, StateSigner(KEY), publish, op.metrics, learn_slice=4,
                      publish_interval_s=3600, revocations=revocations)
    tp = "demonstrations-0"

    def handle(offset: int, generation: int = 1) -> Any:
        return SimpleNamespace(message=SimpleNamespace(
            tp=tp, offset=offset, generation_id=generation, value=demos[offset]))

    await learner.learn(demos[:3], [(tp, o) for o in range(3)])
    learner.hold([handle(o) for o in range(3)])

    async def replace_after_first_slice() -> None:
        while timeline.count("learn 4") < 1:
            await asyncio.sleep(0)
        learner.state_replaced()  # (the cascade's load_state has just run)

    replacing = asyncio.ensure_future(replace_after_first_slice())
    await learner.learn(demos[3:13], [(tp, o) for o in range(3, 13)])
    await replacing
    # The 3 held and the 4 of the batch learned before the replacement, again; then the rest.
    assert timeline == ["learn 3", "learn 4", "learn 4", "learn 3", "learn 4", "learn 2"]
    assert learned._value.get() == 3 + 10 + 7
    # Records read before a revoke are never held for acking; a revoke while a state is
    # sealed stops its publication.
    learner.hold([handle(o) for o in range(3, 13)])
    revocations.revoke({tp}, generation=1)
    learner.hold([handle(13)])
    seal = learner._seal

    def seal_then_revoke(*args: Any) -> bytes:
        learner.forget({tp})
        return seal(*args)

    learner._seal = seal_then_revoke  # type: ignore[method-assign]
    acked: list[Any] = []

    async def ack(h: Any) -> None:
        acked.append(h)

    assert not await learner.maybe_publish(ack, force=True)
    assert published == [] and acked == []
    learner._seal = seal  # type: ignore[method-assign]
    await learner.learn(demos[14:15], [(tp, 14)])  # generation 2: the partition is back
    learner.hold([handle(14, generation=2), handle(12)])
    assert await learner.maybe_publish(ack, force=True)
    assert [h.message.offset for h in acked] == [14] and len(published) == 1


async def test_learning_lets_the_event_loop_turn_between_slices(records_file: Path) -> None:
    """A batch of demonstrations is learned a slice at a time, and other tasks (answering) run
    between the slices rather than wait for the whole batch."""
    op = make_operator(records_file, warmup=20)
    rows = read_stream(records_file)[:10]
    demos = demonstration_records(rows)
    timeline = logged_learning(op)

    async def answering() -> None:
        for _ in range(3):
            timeline.append("answer")
            await asyncio.sleep(0)

    async def publish(blob: bytes) -> None:
        raise AssertionError("not due")

    learner = FleetLearner(op.model, StateSigner(KEY), publish, op.metrics, learn_slice=4)
    other = asyncio.ensure_future(answering())
    assert await learner.learn(demos) == 10
    await other
    assert [t for t in timeline if t.startswith("learn")] == ["learn 4", "learn 4", "learn 2"]
    first, last = timeline.index("learn 4"), timeline.index("learn 2")
    assert "answer" in timeline[first:last]  # the loop turned while the batch was learned


def test_attach_installs_the_agents_into_a_faust_app(records_file: Path) -> None:
    import faust

    import streamcascade
    from streamcascade.errors import ConfigurationError

    cascade = make_operator(records_file).model
    app = faust.App("attach-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    with pytest.raises(ConfigurationError, match="signing key"):
        streamcascade.attach(app, cascade, source="in", sink="out", state_topic="state")
    handle = streamcascade.attach(app, cascade, source="in", sink="out", feedback="fb",
                                  dlq="dlq", state_topic="state", signing_key=KEY)
    assert set(handle.agents) == {"operator", "feedback", "learner"}
    assert handle.topics.demonstrations == "attach-test-demonstrations"
    assert {a.name for a in app.agents.values()} >= {
        "streamcascade-in-operator", "streamcascade-in-feedback", "streamcascade-in-learner"}
    assert app.conf.stream_wait_empty is False
    # Without a dead-letter topic named, dead letters still go to one, never only to the log.
    from streamcascade.settings import Settings

    other = faust.App("attach-test-2", broker="kafka://127.0.0.1:1", web_enabled=False)
    no_default = Settings(dlq_topic=None)
    assert streamcascade.attach(other, cascade, source="in", sink="out",
                                settings=no_default).topics.dlq == "in-dead-letters"


async def test_an_unreachable_llm_gives_dead_letters_after_retries_and_the_stream_goes_on(
    records_file: Path,
) -> None:
    from streamcascade.kafka import find_free_port
    from streamcascade.models.llm.openai import OpenAIChatLLM

    # A real fault: nothing listens on this port, so every call is refused, retried, then fails.
    url = f"http://127.0.0.1:{find_free_port()}/v1"
    llm = OpenAIChatLLM(url, "none", TASK, retries=1, backoff_base=0.01, backoff_max=0.02,
                        timeout=2.0)
    cascade = build_cascade(TASK, llm, CascadeConfig(stages=["hashed"]),
                            hashed={"n_features": 2**12})
    op = CascadeOperator(cascade, RecordCodec(), DecisionLog(), OperatorMetrics(["hashed", "none"]))
    codec = RecordCodec()
    rows = read_stream(records_file, 5)
    out = await op.handle_events(
        [record(codec.encode_event_fields(r.id, r.text), i) for i, r in enumerate(rows)])
    letters = by_topic(out, "dlq")
    assert [d["reason"] for d in letters] == [dl.LLM_FAILED] * 5  # warm-up: all go to the LLM
    assert all(d["detail"] for d in letters)
    assert by_topic(out, "output") == [] and by_topic(out, "feedback") == []
    # The next batch is handled too (nothing raised, nothing stuck).
    more = await op.handle_events([record(b"{bad", 9)])
    assert [d["reason"] for d in by_topic(more, "dlq")] == [dl.MALFORMED_JSON]


class GatedLLM(RecordedLLM):
    """Recorded answers, given only once the gate opens (or an error after a second); with
    ``crash``, an exception instead once the gate opens."""

    def __init__(self, *args: Any, crash: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.crash = crash

    async def answer(self, events: Any) -> Any:
        await asyncio.wait_for(self.gate.wait(), timeout=1.0)
        if self.crash:
            raise RuntimeError("the LLM client broke")
        return await super().answer(events)


@pytest.mark.parametrize("crash", [False, True])
async def test_early_answers_are_written_before_the_llm_answers(records_file: Path,
                                                                crash: bool) -> None:
    llm = GatedLLM(records_file, LLM, TASK, crash=crash)
    # No warm-up and a price that makes every answer early, but half explored: both kinds.
    cascade = build_cascade(TASK, llm, CascadeConfig(stages=["hashed"], mu=1.0, warmup=0,
                                                     exploration=0.5, audit_rate=0.0))
    op = CascadeOperator(cascade, RecordCodec(), DecisionLog(ttl_s=30),
                         OperatorMetrics(["hashed", LLM]))
    codec = RecordCodec()
    rows = [r for r in read_stream(records_file, 60) if r.id not in ("5", "6")]
    batch = [record(codec.encode_event_fields(r.id, r.text), i) for i, r in enumerate(rows)]
    early: list[Outgoing] = []

    def write_early(out: list[Outgoing]) -> None:
        early.extend(out)
        llm.gate.set()  # the LLM answers only after the early outputs were handed over

    out = await op.handle_events(batch, write_early)
    first = by_topic(early, "output")
    if crash:  # the rest of the batch becomes dead letters, the early answers do not
        letters = by_topic(out, "dlq")
        assert first and letters and not by_topic(out, "output")
        assert {d["reason"] for d in letters} == {dl.CASCADE_ERROR}
        assert len(first) + len(letters) == len(rows)
        return
    rest = by_topic(out, "output")
    assert first and rest
    assert {o["stage"] for o in first} == {"hashed"} and {o["stage"] for o in rest} == {LLM}
    assert sorted(o["id"] for o in first + rest) == sorted(r.id for r in rows)  # once each
