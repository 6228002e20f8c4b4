"""The operator's Prometheus metrics: counts per stage, rolling rates, quality on feedback."""

from __future__ import annotations

import urllib.request

from prometheus_client import generate_latest

from streamcascade.kafka import find_free_port
from streamcascade.models.types import Decision
from streamcascade.operators.metrics import OperatorMetrics

STAGES = ["hashed", "onnx", "llm"]


def decision(stage_index: int) -> Decision:
    return Decision("x", "a", 0, STAGES[stage_index], stage_index, 0.9, 1.0 + stage_index, [])


def value(m: OperatorMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def test_counts_per_stage_and_rolling_deferral_rates() -> None:
    m = OperatorMetrics(STAGES, window=4)
    m.observe_batch([decision(0), decision(2), decision(1), decision(2)], [0.001] * 4)
    assert value(m, "streamcascade_stage_events_in_total", stage="hashed") == 4
    assert value(m, "streamcascade_stage_events_in_total", stage="onnx") == 3
    assert value(m, "streamcascade_stage_events_in_total", stage="llm") == 2
    assert value(m, "streamcascade_stage_events_out_total", stage="llm") == 2
    assert value(m, "streamcascade_cost_total", stage="llm") == 6.0
    assert value(m, "streamcascade_deferral_rate", stage="hashed") == 0.75
    assert abs(value(m, "streamcascade_deferral_rate", stage="onnx") - 2 / 3) < 1e-9
    assert value(m, "streamcascade_llm_share") == 0.5
    # The window holds the last four answers: four first-stage answers push the others out.
    m.observe_batch([decision(0)] * 4, [0.001] * 4)
    assert value(m, "streamcascade_llm_share") == 0.0
    assert value(m, "streamcascade_deferral_rate", stage="hashed") == 0.0
    assert value(m, "streamcascade_decision_latency_seconds_count", stage="hashed") == 5


def test_llm_calls_count_audits_and_failures() -> None:
    m = OperatorMetrics(STAGES)
    answered = Decision("a", "x", 0, "llm", 2, 1.0, 1.0, ["hashed", "onnx", "llm"])
    audited = Decision("b", "x", 0, "llm", 2, 1.0, 1.0, ["hashed", "llm:audit"])
    failed = Decision("c", None, None, "llm", 2, 1.0, 1.0, ["hashed", "onnx", "llm"],
                      error="timed out")
    early = Decision("d", "x", 0, "hashed", 0, 0.9, 0.1, ["hashed"])
    m.observe_llm_calls([answered, audited, failed, early])
    assert value(m, "streamcascade_llm_calls_total") == 3


def test_every_dead_letter_reason_is_a_series_from_the_start() -> None:
    from streamcascade.operators import dead_letters as dl

    m = OperatorMetrics(STAGES)
    assert [value(m, "streamcascade_dead_letters_total", reason=r) for r in dl.REASONS] == [
        0.0] * len(dl.REASONS)


def test_rolling_quality_on_ground_truth() -> None:
    m = OperatorMetrics(STAGES, window=2)
    m.observe_ground_truth(1, 1)
    m.observe_ground_truth(0, 1)
    assert value(m, "streamcascade_rolling_accuracy") == 0.5
    m.observe_ground_truth(1, 1)
    assert value(m, "streamcascade_rolling_accuracy") == 0.5  # (wrong, right) in the window
    m.observe_ground_truth(None, 1)
    assert value(m, "streamcascade_rolling_accuracy") == 0.5


def test_served_over_http_from_its_own_registry() -> None:
    a, b = OperatorMetrics(STAGES), OperatorMetrics(STAGES)  # two operators never collide
    a.dead_letters.labels("malformed_json").inc(3)
    port = find_free_port()
    a.serve(port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'streamcascade_dead_letters_total{reason="malformed_json"} 3.0' in text
    assert b'reason="malformed_json"} 0.0' in generate_latest(b.registry)


def test_loop_lag_probe_sees_a_stall() -> None:
    import asyncio
    import time

    from streamcascade.operators.event_loop import probe_loop_lag

    metrics = OperatorMetrics(["hashed", "llm"])

    async def stall_once() -> None:
        probe = asyncio.ensure_future(probe_loop_lag(metrics, interval_s=0.01))
        await asyncio.sleep(0.05)  # some probes on an idle loop
        time.sleep(0.08)  # a callback that does not yield
        await asyncio.sleep(0.05)
        probe.cancel()

    asyncio.run(stall_once())
    buckets = {s.labels["le"]: s.value for s in metrics.loop_lag.collect()[0].samples
               if s.name.endswith("_bucket")}
    total = buckets["+Inf"]
    assert total >= 5
    assert total - buckets["0.05"] >= 1  # the stall, seen by the probe it delayed
