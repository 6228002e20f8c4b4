"""A degraded answer in the output record, and the LLM's breaker, hedges, timeouts and degraded
answers as Prometheus metrics."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import generate_latest

from streamcascade.models.llm.base import ReportsHealth
from streamcascade.models.types import Decision
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.metrics import OperatorMetrics


def _decision(degraded: bool) -> Decision:
    return Decision("7", "hate", 1, "hashed", 0, 0.8, 0.5, ["hashed", "llm"], degraded=degraded)


def test_a_degraded_output_says_so_and_names_its_stage() -> None:
    out = json.loads(RecordCodec().encode_output(_decision(True), 1.0))
    assert out["degraded"] is True and out["stage"] == "hashed"
    assert "degraded" not in json.loads(RecordCodec().encode_output(_decision(False), 1.0))


class Health:
    def __init__(self, **report: Any) -> None:
        self.report = report

    def health(self) -> dict[str, Any]:
        return self.report


def _scrape(metrics: OperatorMetrics) -> dict[str, float]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    return {k: float(v) for k, _, v in (line.rpartition(" ") for line in lines)
            if k and not k.startswith("#")}


def test_degraded_answers_are_counted_by_the_stage_that_gave_them() -> None:
    metrics = OperatorMetrics(["hashed", "llm"])
    metrics.observe_batch([_decision(True), _decision(False), _decision(True)], [0.1] * 3)
    assert _scrape(metrics)['streamcascade_degraded_total{stage="hashed"}'] == 2.0


def test_the_llm_health_is_read_at_each_scrape() -> None:
    source = Health(breaker_state="open", requests=40, retries=3, hedges=5, hedge_wins=2,
                    timeouts=7, deadline_exceeded=1, breaker_rejections=9, breaker_opened=1,
                    latency_p95_s=0.25)
    assert isinstance(source, ReportsHealth)
    metrics = OperatorMetrics(["hashed", "llm"])
    metrics.watch_llm(source)
    metrics.watch_llm(source)  # once is enough; twice is no error
    seen = _scrape(metrics)
    assert seen['streamcascade_llm_breaker_state{state="open"}'] == 1.0
    assert seen['streamcascade_llm_breaker_state{state="closed"}'] == 0.0
    assert seen["streamcascade_llm_hedges_total"] == 5.0
    assert seen["streamcascade_llm_timeouts_total"] == 7.0
    assert seen["streamcascade_llm_latency_p95_seconds"] == 0.25
    source.report.update(breaker_state="closed", hedges=6)
    seen = _scrape(metrics)
    assert seen['streamcascade_llm_breaker_state{state="closed"}'] == 1.0
    assert seen["streamcascade_llm_hedges_total"] == 6.0


def test_a_backend_with_nothing_to_report_adds_no_series() -> None:
    metrics = OperatorMetrics(["hashed", "llm"])
    metrics.watch_llm(Health())
    seen = _scrape(metrics)
    assert not any(k.startswith(("streamcascade_llm_breaker", "streamcascade_llm_hedges"))
                   for k in seen)
    assert "streamcascade_llm_calls_total" in seen  # the operator's own LLM figures stay
