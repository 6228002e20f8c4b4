"""``streamcascade train --from-kafka --publish`` on a real broker: a deployment's history trained
into a signed version that a new worker starts from, without learning that history again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from operator_harness import LLM, OperatorRun, rows

from streamcascade.benchkit.stream_io import Received, TopicReader, wait_for
from streamcascade.cli import cli
from streamcascade.operators.state_store import StateSigner


def test_a_worker_starts_from_the_version_trained_on_its_topics(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    stream = rows(700)
    history, fresh = stream[:600], stream[600:]
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path)
    labelled = [(r.id, r.label) for r in history if r.label]
    try:
        run.produce(run.event_records(history))
        run.send_feedback(labelled)
        run.send_feedback([(labelled[0][0], labelled[0][1]), ("no-such-event", labelled[0][1])])
        report = tmp_path / "report.json"
        result = CliRunner().invoke(cli, [
            "train", "--from-kafka", "--bootstrap", kafka_bootstrap,
            "--input-topic", run.topics["input"], "--feedback-topic", run.topics["feedback"],
            "--state-topic", run.topics["state-topic"], "--task", "hatespeech",
            "--epochs", "2", "--policy-epochs", "2", "--publish", "--json", str(report),
        ], env={"STREAMCASCADE_STATE_SIGNING_KEY": run.key})
        assert result.exit_code == 0, result.output
        figures = json.loads(report.read_text())
        assert figures["published"]["version"] == 1 and run.state_versions() == [1]
        assert figures["rows"] + figures["skipped"]["no_features"] == len(labelled)
        assert figures["skipped"]["duplicate_id"] == 1 and figures["skipped"]["no_text"] == 1
        offsets = figures["offsets"]
        assert published_training(run)["offsets"] == offsets
        assert sum(end - start for start, end in offsets[run.topics["input"]].values()) == 600
        assert sum(end - start
                   for start, end in offsets[run.topics["feedback"]].values()) == len(labelled) + 2

        run.start_worker()
        run.wait_ready()
        # (its metrics are served before the state is loaded: version 0 until then)
        assert wait_for(lambda: run.metric(0, "streamcascade_model_version") >= 1, 30), run.logs()
        # It reads the history too (from the earliest offset): none of it is learned again.
        assert run.wait_answered({r.id for r in history}, timeout=40), run.logs()
        run.produce(run.event_records(fresh))
        assert run.wait_answered({r.id for r in fresh}, timeout=20), run.logs()
        wait_for(lambda: run.metric(0, "streamcascade_demonstrations_skipped_total",
                                    'reason="duplicate"') >= figures["rows"], 15)
        duplicates = run.metric(0, "streamcascade_demonstrations_skipped_total",
                                'reason="duplicate"')
        learned_truth = run.metric(0, "streamcascade_demonstrations_learned_total",
                                   'source="ground_truth"')
    finally:
        run.stop_all()
    assert "loaded model state version 1" in run.logs_whole()
    assert duplicates >= figures["rows"] and learned_truth == 0, (duplicates, learned_truth)
    # Warm from the first event: a cold worker sends its first 100 events to the LLM (warm-up);
    # this one answers many of the events it was trained on with its first stage.
    first = [run.last_output(r.id) for r in history[:100] if r.id in run.outputs]
    assert len(first) > 90 and all(o["model_version"] >= 1 for o in first)
    assert sum(o["stage"] != LLM for o in first) > 30
    # Events after the recorded offsets are answered too, by the trained version or a later one.
    answered = [run.last_output(r.id) for r in fresh if r.id in run.outputs]
    assert len(answered) > 90 and all(o["model_version"] >= 1 for o in answered)


def published_training(run: OperatorRun) -> dict[str, Any]:
    """The training metadata of the newest signed state on the run's state topic."""
    reader = TopicReader(run.bootstrap, [run.topics["state-topic"]])
    records: list[Received] = []

    def read() -> bool:
        records.extend(reader.poll(timeout=0.5))
        return bool(records)

    try:
        assert wait_for(read, 10)
    finally:
        reader.close()
    snapshot = StateSigner(run.key).verify(records[-1].value)
    training = snapshot.meta["training"]
    assert isinstance(training, dict) and snapshot.version == 1
    assert training["engine"] == "duckdb" and training["rows"] > 0
    return training
