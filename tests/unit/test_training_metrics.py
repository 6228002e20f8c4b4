"""A learner that falls behind says so: per-stage metrics (backlog, dropped) and a rate-limited
WARNING, with the fine-tuned stage's own figures reaching the operator's metrics."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from cascade_streams import sentiment_stream, write_stream
from tiny_encoder import tiny_split_dir

from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.stages import finetune_runner
from streamcascade.models.stages.finetune_runner import SnapshotRunner
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.tasks import TASKS
from streamcascade.models.training import ReportsTraining, TrainsInBackground, training_report
from streamcascade.operators.metrics import OperatorMetrics

TASK = TASKS["imdb"]


class BehindStage:
    """A stage's training figures, as a fine-tuned stage that is behind reports them."""

    name = "finetune"

    def __init__(self, backlog: int, dropped: int) -> None:
        self.training_backlog = backlog
        self.demonstrations_dropped = dropped


class Reporting:
    def __init__(self, *stages: object) -> None:
        self.stages = stages

    def training_report(self) -> dict[str, dict[str, int]]:
        return training_report(self.stages)


def _sample(metrics: OperatorMetrics, name: str, stage: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"stage": stage})


def test_only_stages_that_train_in_the_background_are_reported() -> None:
    behind = BehindStage(backlog=7, dropped=3)
    assert isinstance(behind, TrainsInBackground)
    assert not isinstance(HashedTextStage(TASK.labels), TrainsInBackground)
    report = training_report([HashedTextStage(TASK.labels), behind])
    assert report == {"finetune": {"backlog": 7, "dropped": 3}}


def test_the_operator_metrics_show_backlog_and_dropped_per_stage() -> None:
    metrics = OperatorMetrics(["hashed", "finetune", "llm"])
    families = {family.name for family in metrics.registry.collect()}
    # The families exist before any model reports training, without samples.
    assert {"streamcascade_training_backlog", "streamcascade_training_dropped"} <= families
    assert _sample(metrics, "streamcascade_training_backlog", "finetune") is None
    behind = BehindStage(backlog=7, dropped=3)
    source = Reporting(HashedTextStage(TASK.labels), behind)
    assert isinstance(source, ReportsTraining)
    metrics.watch_training(source)
    assert _sample(metrics, "streamcascade_training_backlog", "finetune") == 7
    assert _sample(metrics, "streamcascade_training_dropped_total", "finetune") == 3
    assert _sample(metrics, "streamcascade_training_backlog", "hashed") is None
    behind.training_backlog, behind.demonstrations_dropped = 0, 40  # read at each scrape
    assert _sample(metrics, "streamcascade_training_backlog", "finetune") == 0
    assert _sample(metrics, "streamcascade_training_dropped_total", "finetune") == 40


def test_a_cascade_reports_its_fine_tuned_stage(tmp_path_factory: pytest.TempPathFactory,
                                                tmp_path: Path) -> None:
    split_dir = tiny_split_dir(tmp_path_factory)
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(10, seed=1))
    cascade = build_cascade(TASK, RecordedLLM(path, "oracle", TASK),
                            CascadeConfig(stages=["hashed", "finetune"]),
                            finetune={"model_dir": split_dir, "threads": 1})
    assert isinstance(cascade, ReportsTraining)
    assert cascade.training_report() == {"finetune": {"backlog": 0, "dropped": 0}}
    metrics = OperatorMetrics(cascade.stage_names)
    metrics.watch_training(cascade)
    assert _sample(metrics, "streamcascade_training_dropped_total", "finetune") == 0


def test_falling_behind_warns_when_dropping_starts_then_at_most_once_a_while(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    runner: SnapshotRunner[int, int] = SnapshotRunner(
        lambda batch: gate.wait(10), lambda number, covers: number, every=5, max_backlog=2)

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.WARNING
                and "behind the stream" in r.getMessage()]

    try:
        with caplog.at_level(logging.WARNING):
            for i in range(30):  # dropping all along, over several snapshots' worth
                runner.submit([i])
            assert runner.dropped >= 20
            assert len(warnings()) == 1
            monkeypatch.setattr(finetune_runner, "WARN_EVERY_S", 0.0)
            runner.submit([30, 31])
            assert len(warnings()) == 2
            # The second tells how many were dropped since the first.
            first, second = (record.args for record in warnings())
            assert isinstance(first, tuple) and isinstance(second, tuple)
            assert second[0] == runner.dropped - first[1] > 0
    finally:
        gate.set()
        runner.close(wait=5)
