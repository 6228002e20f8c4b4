"""The benchmark's baseline agent, run as `streamcascade worker --pass-through`: it shares the
operator's plumbing (micro-batches, pipelined writes, acks in offset order), so it must answer
every event as the operator does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from operator_harness import OperatorRun, rows


def test_the_pass_through_agent_writes_an_output_per_event(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    stream = rows(300)
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, partitions=2)
    try:
        run.start_worker("--pass-through")
        run.produce([*run.event_records(stream), (b"bad", b"{not json")])
        assert run.wait_answered({r.id for r in stream}, timeout=60), run.logs()
    finally:
        run.stop_all()
    assert set(run.outputs) == {r.id for r in stream}
    first = json.loads(run.outputs[stream[0].id][0].value or b"{}")
    assert first["stage"] == "passthrough" and first["latency_ms"] >= 0
    assert "Crashed" not in run.logs()
