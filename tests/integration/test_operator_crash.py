"""``kill -9`` of a worker mid-stream, then a restart: nothing lost, the model never goes back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from operator_harness import OperatorRun, rows


def test_kill_9_then_restart_loses_nothing_and_keeps_the_model(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    n = 2000
    stream = rows(n)
    ids = {r.id for r in stream}
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, worker_args=("--warmup", "100"))
    try:
        first = run.start_worker()
        run.produce(run.event_records(stream[:1000]), rate=400)
        # Mid-stream: once some answers are out and some state is published, kill it hard.
        deadline = time.monotonic() + 60
        while len(run.outputs) < 600 and time.monotonic() < deadline:
            run.poll()
        assert len(run.outputs) >= 600, run.logs()
        while not run.state_versions() and time.monotonic() < deadline:
            run.poll()
        run.kill_hard(first)
        killed_at_ms = time.time() * 1000
        before = run.state_versions()
        assert before, "no model state was published before the kill"
        answered_before = set(run.outputs)
        # The second half arrives while no worker runs; then a new worker starts.
        run.produce(run.event_records(stream[1000:]))
        run.start_worker()
        assert run.wait_answered(ids, timeout=120), run.logs()
        # The restarted learner learns the replayed and new demonstrations and publishes.
        deadline = time.monotonic() + 30
        while max(after := run.state_versions()) <= max(before):
            assert time.monotonic() < deadline, (before, after, run.logs())
    finally:
        run.stop_all()
    # Every event has an output (or a dead letter when the recorded LLM had no usable answer).
    assert ids <= run.answered()
    assert {d["reason"] for d in run.dead} <= {"llm_failed"}
    assert len(answered_before) < n  # the kill really was mid-stream
    # Learning resumed from the last published state: versions only go up, past the old ones.
    assert after[: len(before)] == before
    assert after == sorted(after) and after[-1] > max(before)
    # Outputs written after the restart come from a model at least as new as the last state.
    restarted = [r for recs in run.outputs.values() for r in recs if r.timestamp_ms > killed_at_ms]
    assert restarted
    versions = [json.loads(r.value or b"{}")["model_version"] for r in restarted]
    assert min(versions) >= max(before)
