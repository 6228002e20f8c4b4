"""A flood of feedback: repeats are acked once counted, expiry runs in bounded slices, one id's many
waiting records leave the decision log in linear time; and the Kafka clients' repeated log lines
are summarised from the worker's start."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.tasks import TASKS
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import Feedback, RecordCodec
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.decision_log import DecisionLog
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.operator import (
    EXPIRY_SLICE,
    CascadeOperator,
    FeedbackResult,
    InRecord,
)

LLM = "gpt-3.5-turbo-1106"
TASK = TASKS["hatespeech"]


def make_operator(records: Path, clock: SimpleNamespace) -> CascadeOperator:
    cascade = build_cascade(TASK, RecordedLLM(records, LLM, TASK),
                            CascadeConfig(stages=["hashed"]), hashed={"n_features": 2**14})
    log = DecisionLog(ttl_s=30, clock=lambda: clock.now)
    return CascadeOperator(cascade, RecordCodec(), log, OperatorMetrics(cascade.stage_names),
                           clock=lambda: clock.now)


def feedback(event_id: str, label: str, offset: int) -> InRecord:
    value = json.dumps({"id": event_id, "label": label, "source": "ground_truth"}).encode()
    return InRecord(event_id.encode(), value, SourcePosition("feedback", 0, offset), 0.0,
                    handle=offset)


def skipped(op: CascadeOperator, reason: str) -> float:
    return float(op.metrics.demonstrations_skipped.labels(reason)._value.get())


async def test_repeated_feedback_is_joined_once_and_acked(records_file: Path) -> None:
    clock = SimpleNamespace(now=0.0)
    op = make_operator(records_file, clock)
    row = read_stream(records_file, 1)[0]
    codec = RecordCodec()
    await op.handle_events([InRecord(codec.key(row.id), codec.encode_event_fields(row.id, row.text),
                                     SourcePosition("events", 0, 0), 0.0)])
    wrong = "hate" if row.label == "noHate" else "noHate"
    records = [feedback(row.id, str(row.label), 0)] + [
        feedback(row.id, wrong, i) for i in range(1, 10_001)]
    result = FeedbackResult()
    for lo in range(0, len(records), 100):
        part = op.handle_feedback(records[lo:lo + 100])
        result.outgoing += part.outgoing
        result.ack += part.ack
    demonstrations = [o for o in result.outgoing if o.topic == "demonstrations"]
    assert len(demonstrations) == 1 and json.loads(demonstrations[0].value)["label"] == row.label
    assert sorted(result.ack) == list(range(10_001))  # every record acked, none waits
    assert skipped(op, "conflicting") == 10_000
    assert op.decision_log.pending == 0


async def test_unmatched_feedback_expires_in_slices(records_file: Path) -> None:
    clock = SimpleNamespace(now=0.0)
    op = make_operator(records_file, clock)
    # 10,000 feedback records for events that never come (distinct ids: repeats are dropped).
    for lo in range(0, 10_000, 100):
        result = op.handle_feedback([feedback(f"gone-{i}", "hate", i)
                                     for i in range(lo, lo + 100)])
        assert not result.outgoing and not result.ack
    clock.now = 31.0  # past the time-to-live
    slices = 0
    letters = 0
    more = True
    while more:
        result = FeedbackResult()
        more = op.expire_into(result, EXPIRY_SLICE)
        assert len(result.outgoing) <= EXPIRY_SLICE
        letters += len(result.outgoing)
        slices += 1
    assert letters == 10_000 and slices == 10_000 // EXPIRY_SLICE
    assert op.metrics.dead_letters.labels(dl.FEEDBACK_UNMATCHED)._value.get() == 10_000
    # A feedback batch dead-letters at most a slice of what is due, too.
    for i in range(300):
        op.handle_feedback([feedback(f"later-{i}", "hate", 20_000 + i)])
    clock.now = 62.0
    assert len(op.handle_feedback([]).outgoing) == EXPIRY_SLICE


def test_many_waiting_records_of_one_id_leave_in_linear_time() -> None:
    clock = SimpleNamespace(now=0.0)
    log = DecisionLog(ttl_s=10, clock=lambda: clock.now)
    for i in range(20_000):
        log.add_feedback(Feedback("2001", 0, "ground_truth"), b"{}", None, token=i)
    clock.now = 11.0
    started = time.perf_counter()
    expired = []
    while log.expiry_due():
        expired += log.expire(limit=500)
    assert len(expired) == 20_000 and log.pending == 0
    # Linear: well under a second (one id's index was rebuilt on each removal: minutes).
    assert time.perf_counter() - started < 2.0
    assert not log.expiry_due() and log.expire(limit=10) == []


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_kafka_clients_repeated_lines_are_summarised_from_the_start(
        records_file: Path) -> None:
    import faust

    from streamcascade.operators.runtime import OperatorRuntime
    from streamcascade.operators.topics import OperatorTopics

    clock = SimpleNamespace(now=0.0)
    app = faust.App(f"throttle-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1",
                    web_enabled=False)
    runtime = OperatorRuntime(app, make_operator(records_file, clock).model,
                              OperatorTopics("in", "out", "fb", "dlq"))
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        runtime.quiet_client_logs()
        runtime.quiet_client_logs()  # once only
        # A logger made after the start is covered too (through the root's handlers).
        client = logging.getLogger(f"aiokafka.conn-{uuid.uuid4().hex[:6]}")
        ours = logging.getLogger("streamcascade.operators.test-throttle")
        for _ in range(500):
            client.error("Unable connect to node with id %s", 1)
            ours.error("not a client line")
    finally:
        assert runtime.log_throttle is not None
        runtime.log_throttle.remove()
        root.removeHandler(capture)
    assert capture.lines.count("Unable connect to node with id 1") == 1
    assert capture.lines.count("not a client line") == 500
