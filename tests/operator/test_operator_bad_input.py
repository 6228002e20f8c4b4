"""Inputs that used to crash the worker or lose an answer: each gets an output or a dead letter.

Found by a review that drove the operator with hand-made records; every case here failed on the
code before its fix (a crash that loops on restart, or a record with neither an output nor a dead
letter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_operator_agent import (  # the same recorded cascade and helpers
    LLM,
    TASK,
    by_topic,
    make_operator,
    record,
)

from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.protocol import BatchAnswer
from streamcascade.models.types import Decision, Event
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import MAX_ID_BYTES, RecordCodec
from streamcascade.operators.operator import Outgoing


def reasons(out: list[Outgoing]) -> list[tuple[str, int]]:
    return sorted((d["reason"], d["offset"]) for d in by_topic(out, "dlq"))


async def test_unusable_records_are_dead_letters_and_the_batch_is_answered(
        records_file: Path) -> None:
    op = make_operator(records_file)
    op.codec = RecordCodec(max_bytes=200_000)
    codec = RecordCodec()
    rows = read_stream(records_file, 3)
    good = [record(codec.encode_event_fields(r.id, r.text), i) for i, r in enumerate(rows)]
    bad = [
        record(b"[" * 100_000, 10),  # nested too deep for the JSON parser (RecursionError)
        record(b'{"id": "a", "text": "caf\xed\xa0\xbd"}', 11),  # not UTF-8 (a surrogate)
        record(b'{"id": "\\ud83d", "text": "lone surrogate id"}', 12),
        record(b'{"id": "b", "text": "lone \\ud83d in the text"}', 13),
        record(json.dumps({"id": "i" * (MAX_ID_BYTES + 1), "text": "long id"}).encode(), 14),
    ]
    # JSON in the encodings RFC 8259 allows is fine: a BOM, UTF-16.
    bom, u16 = read_stream(records_file, 5)[3:]
    fine = [record(b"\xef\xbb\xbf" + codec.encode_event_fields(bom.id, bom.text), 20),
            record(json.dumps({"id": u16.id, "text": u16.text}).encode("utf-16-le"), 21)]
    out = await op.handle_events(good + bad + fine)
    assert sorted(o["id"] for o in by_topic(out, "output")) == sorted(
        [r.id for r in rows] + [bom.id, u16.id])
    assert reasons(out) == [(dl.MALFORMED_JSON, 10), (dl.MALFORMED_JSON, 11),
                            (dl.MISSING_ID, 12), (dl.MISSING_ID, 14), (dl.MISSING_TEXT, 13)]


async def test_feedback_with_an_unknown_source_or_deep_json_is_a_dead_letter(
        records_file: Path) -> None:
    op = make_operator(records_file)
    label = TASK.labels.names[0]
    values = [json.dumps({"id": "1", "label": label, "source": s}).encode()
              for s in ("grund_truth", 5, "s" * 1000)]
    values += [b"[" * 100_000, json.dumps({"id": "1", "label": label}).encode()]
    op.codec = RecordCodec(max_bytes=200_000)
    result = op.handle_feedback([record(v, i, topic="fb") for i, v in enumerate(values)])
    letters = [json.loads(o.value) for o in result.outgoing if o.topic == "dlq"]
    assert [(d["reason"], d["offset"]) for d in letters] == [
        (dl.UNKNOWN_SOURCE, 0), (dl.UNKNOWN_SOURCE, 1), (dl.UNKNOWN_SOURCE, 2),
        (dl.MALFORMED_JSON, 3)]
    assert len(letters[2]["detail"]) < 300  # the source is quoted, not copied whole
    assert op.decision_log.pending == 1  # the one without a source waits as ground truth


async def test_a_repeated_id_in_one_batch_gets_each_of_its_answers(records_file: Path) -> None:
    """The first copy of an id answered early and the second by the LLM (a reused id with
    another text, or an audit): each copy gets its output."""
    op = make_operator(records_file)
    codec = RecordCodec()
    label = TASK.labels.names[0]
    calls: list[list[str]] = []

    async def answer(events: list[Event], on_early: Any = None) -> BatchAnswer:
        calls.append([e.id for e in events])
        decisions = [Decision(e.id, label, 0, "hashed" if i == 0 else "llm", 0, 0.9, 1.0, [])
                     for i, e in enumerate(events)]
        if on_early is not None:
            on_early(decisions[:1])
        return BatchAnswer(decisions)

    op.model.answer = answer  # type: ignore[method-assign]
    values = [codec.encode_event_fields(i, f"text {n}") for n, i in enumerate("abab")]
    values.append(values[1])  # an exact repeat (a producer's retry): the same event, once
    written: list[Outgoing] = []
    out = await op.handle_events([record(v, n) for n, v in enumerate(values)], written.extend)
    assert [o["id"] for o in by_topic(written, "output")] == ["a"]  # round 1's early answer
    # The second round writes no early answers: its records come after the first round's.
    assert [(o["id"], o["stage"]) for o in by_topic(out, "output")] == [
        ("b", "llm"), ("a", "hashed"), ("b", "llm")]
    assert calls == [["a", "b"], ["a", "b"]] and reasons(out) == []


async def test_llm_answers_out_of_line_or_outside_the_labels_fail_only_their_events(
        records_file: Path) -> None:
    op = make_operator(records_file)
    codec = RecordCodec()
    rows = read_stream(records_file, 5)
    real = op.model.llm.answer
    short = [False]

    async def odd(events: list[Event]) -> list[LLMAnswer]:
        answers = list(await real(events))
        if short[0]:
            return answers[:-1]  # one answer fewer than events: none can be trusted
        bad: list[Any] = [99, "1", True]
        return answers[:2] + [LLMAnswer(b, 1.0, None, str(b)) for b in bad]

    op.model.llm.answer = odd  # type: ignore[method-assign]
    batch = [record(codec.encode_event_fields(r.id, r.text), i) for i, r in enumerate(rows)]
    out = await op.handle_events(batch)
    assert sorted(o["id"] for o in by_topic(out, "output")) == sorted(r.id for r in rows[:2])
    assert reasons(out) == [(dl.LLM_FAILED, 2), (dl.LLM_FAILED, 3), (dl.LLM_FAILED, 4)]
    assert sorted(json.loads(o.value)["id"] for o in out if o.topic == "feedback") == sorted(
        r.id for r in rows[:2])
    short[0] = True
    out = await op.handle_events([record(codec.encode_event_fields(f"s{r.id}", r.text), i)
                                  for i, r in enumerate(rows)])
    assert reasons(out) == [(dl.LLM_FAILED, i) for i in range(5)]
    assert "answers for 5 events" in by_topic(out, "dlq")[0]["detail"]
    assert [o for o in out if o.topic == "feedback"] == []


def test_a_dead_letter_fits_its_topic_with_a_large_key_and_detail(records_file: Path
                                                                  ) -> None:
    op = make_operator(records_file)
    op.dead_letter_max_bytes = 1_048_588  # a topic made with the broker's default
    for key in (b"k" * 200_000, b"k" * 20_000, None):
        letter = op._dead_letter(b"x" * 800_000, dl.MALFORMED_JSON, dl.SourcePosition("t", 0, 1),
                                 "d" * 50_000, key)
        size = len(letter.value) + len(letter.key or b"")
        assert size <= op.dead_letter_max_bytes, (len(key or b""), size)
        detail: Any = json.loads(letter.value)["detail"]
        assert "cut" in detail and len(detail) < 2000


async def test_early_answers_of_a_failed_batch_are_logged_as_answers(records_file: Path) -> None:
    """A batch whose cascade raised after its early answers were written: those events are
    answered (no dead letter), and the decision log keeps their answers, so their ground truth
    scores them as they were answered, not as unanswered."""
    op = make_operator(records_file)
    codec = RecordCodec()
    label = TASK.labels.names[1]

    async def answer(events: list[Event], on_early: Any = None) -> BatchAnswer:
        if events[0].id == "a":  # "a" is answered early, then "b" fails (alone too)
            on_early([Decision("a", label, 1, "hashed", 0, float("nan"), 1.0, [])])
        raise RuntimeError("a stage failed")

    op.model.answer = answer  # type: ignore[method-assign]
    written: list[Outgoing] = []
    out = await op.handle_events([record(codec.encode_event_fields(i, "text"), n)
                                  for n, i in enumerate("ab")], written.extend)
    assert [json.loads(o.value)["confidence"] for o in written] == [None]  # not NaN
    assert reasons(out) == [(dl.CASCADE_ERROR, 1)]
    truth = op.handle_feedback([record(codec.encode_feedback("a", label, "ground_truth"), 0,
                                       topic="fb")])
    assert [o.topic for o in truth.outgoing] == ["demonstrations"]
    assert op.metrics.quality._value.get() == 1.0  # scored as the early answer it got



async def test_an_event_a_stage_fails_on_costs_only_itself(records_file: Path) -> None:
    """A stage that raises on one text (a tokenizer's bug, say): that event is a dead letter,
    the rest of its batch is answered, once each, and the LLM answers of every answered event
    are fed back once (none of a failed attempt)."""
    op = make_operator(records_file)
    stage = op.model.stages[0]
    predict = stage.predict_proba

    def fragile(texts: list[str], upstream: Any = None) -> Any:
        if any("POISON" in t for t in texts):
            raise ValueError("cannot read this text")
        return predict(texts, upstream)

    stage.predict_proba = fragile
    codec = RecordCodec()
    rows = [r for r in read_stream(records_file, 22) if r.id not in ("5", "6")]  # (no LLM answer)
    texts = {r.id: (f"POISON {r.text}" if n in (3, 15) else r.text) for n, r in enumerate(rows)}
    out = await op.handle_events([record(codec.encode_event_fields(r.id, texts[r.id]), n)
                                  for n, r in enumerate(rows)])
    assert reasons(out) == [(dl.CASCADE_ERROR, 3), (dl.CASCADE_ERROR, 15)]
    assert "cannot read this text" in by_topic(out, "dlq")[0]["detail"]
    answered = [o["id"] for o in by_topic(out, "output")]
    assert sorted(answered) == sorted(r.id for n, r in enumerate(rows) if n not in (3, 15))
    assert sorted(o["id"] for o in by_topic(out, "feedback")) == sorted(answered)  # all LLM's


async def test_a_failure_after_the_llm_answered_costs_only_its_event(records_file: Path) -> None:
    """The cascade fails after the LLM answered and early answers were written: every record
    ends with one output or one dead letter, and the LLM's answers are fed back once, only for
    the events they answer."""
    op = make_operator(records_file, mu=1.0, warmup=0, exploration=0.5, audit_rate=0.0)
    cascade = op.model
    remember = cascade._remember
    rows = [r for r in read_stream(records_file, 62) if r.id not in ("5", "6")]
    poison = {rows[7].id, rows[40].id}

    def fragile(batch: Any) -> None:  # the bookkeeping after the LLM's answers
        if poison & {event.id for event in batch.events}:
            raise RuntimeError("bookkeeping failed")
        remember(batch)

    cascade._remember = fragile  # type: ignore[method-assign]
    codec = RecordCodec()
    early: list[Outgoing] = []
    out = await op.handle_events([record(codec.encode_event_fields(r.id, r.text), n)
                                  for n, r in enumerate(rows)], early.extend)
    outputs = by_topic(early, "output") + by_topic(out, "output")
    letters = by_topic(out, "dlq")
    assert sorted([o["id"] for o in outputs] + [rows[d["offset"]].id for d in letters]) == \
        sorted(r.id for r in rows)  # one each
    assert {rows[d["offset"]].id for d in letters} <= poison
    counted = sum(op.metrics.stage_out.labels(s)._value.get() for s in ("hashed", LLM))
    assert counted == len(outputs)
    by_llm = sorted(o["id"] for o in outputs if o["stage"] == LLM)
    assert by_llm and sorted(o["id"] for o in by_topic(out, "feedback")) == by_llm


async def test_a_cascade_failing_on_every_event_is_retried_within_a_budget(
        records_file: Path) -> None:
    op = make_operator(records_file)
    attempts = []

    async def answer(events: list[Event], on_early: Any = None) -> BatchAnswer:
        attempts.append(len(events))
        raise RuntimeError("broken")

    op.model.answer = answer  # type: ignore[method-assign]
    codec = RecordCodec()
    out = await op.handle_events([record(codec.encode_event_fields(str(n), "text"), n)
                                  for n in range(100)])
    assert reasons(out) == [(dl.CASCADE_ERROR, n) for n in range(100)]
    assert 1 < len(attempts) <= 30  # not the 199 attempts of halving down to every event
