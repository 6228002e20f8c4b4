"""The replay and the fault benchmark against a live endpoint that misbehaves six ways in turn:
the stream keeps moving, and every event ends with one answer or none, never lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamcascade.benchkit.fault_server import FAULTY, FaultServer
from streamcascade.cli import cli

DATA = Path(__file__).resolve().parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"
FAST = ["--llm-timeout", "0.5", "--llm-deadline", "1", "--llm-concurrency", "16"]


@pytest.fixture
def faulty() -> Iterator[FaultServer]:
    with FaultServer(FAULTY, slow_seconds=1.0) as server:
        yield server


def _replay(url: str, tmp_path: Path, mode: str) -> dict[str, object]:
    out = tmp_path / f"{mode}.json"
    result = CliRunner().invoke(cli, [
        "replay", "--dataset", str(DATA), "--task", "hatespeech", "--limit", "60",
        "--llm-url", url, "--llm-model", "m", "--on-llm-failure", mode, "--batch-size", "4",
        "--in-flight", "4", *FAST, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(out.read_text())
    return report


@pytest.mark.parametrize("mode", ["degrade", "dead-letter"])
def test_a_replay_against_a_misbehaving_llm_answers_or_dead_letters_every_event(
    faulty: FaultServer, tmp_path: Path, mode: str
) -> None:
    report = _replay(faulty.url, tmp_path, mode)
    assert report["n"] == 60 and report["lost"] == 0 and report["in_flight"] == 4
    assert isinstance(report["config"], dict) and report["config"]["on_llm_failure"] == mode
    assert isinstance(report["timeouts"], int) and report["timeouts"] > 0  # the hung requests
    assert isinstance(report["hedged"], int)
    degraded, unanswered = report["degraded"], report["unanswered"]
    assert isinstance(degraded, int) and isinstance(unanswered, int)
    if mode == "degrade":
        assert unanswered == 0 and degraded > 0
    else:
        assert degraded == 0 and unanswered > 0
    assert faulty.served["hang"] > 0 and faulty.served["429"] > 0


def test_the_fault_benchmark_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    result = CliRunner().invoke(cli, [
        "bench", "llm-faults", "--json", str(out), "--events", "40", "--modes",
        "degrade,dead-letter", "--slow-seconds", "1", "--timeout", "0.5", "--deadline", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["events"] == 40 and set(report["modes"]) == {"degrade", "dead-letter"}
    for figures in report["modes"].values():
        assert figures["lost"] == 0
        assert figures["healthy_events_per_s"] > 0 and figures["faulty_events_per_s"] > 0
        assert figures["throughput_ratio"] == pytest.approx(
            figures["faulty_events_per_s"] / figures["healthy_events_per_s"], abs=1e-3)
    assert report["modes"]["degrade"]["unanswered"] == 0
    assert report["modes"]["dead-letter"]["unanswered"] > 0
