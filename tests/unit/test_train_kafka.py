"""``streamcascade train`` with Kafka, without a broker: the join of feedback with its events,
the seen-set of a published state, and the command's checks and publication path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cascade_streams import sentiment_stream, write_stream
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.errors import ConfigurationError
from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.relational.history import LabelledEvent
from streamcascade.models.relational.publish import training_metadata
from streamcascade.models.state import unpack_state
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Demonstration, Event
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.learning_guard import SEEN_META_KEY, LearningGuard
from streamcascade.operators.state_release import seen_set
from streamcascade.operators.topic_history import (
    TopicOffsets,
    TopicRecord,
    feedback_sources,
    join_history,
)

TASK = TASKS["imdb"]
CODEC = RecordCodec()
KEY = "k" * 32


def feedback(partition: int, offset: int, event_id: str, label: str,
             source: str = "ground_truth") -> TopicRecord:
    return TopicRecord(partition, offset, CODEC.encode_feedback(event_id, label, source))


def event(partition: int, offset: int, event_id: str, text: str) -> TopicRecord:
    return TopicRecord(partition, offset, CODEC.encode_event_fields(event_id, text))


def test_feedback_is_joined_with_its_event_and_what_cannot_teach_is_counted() -> None:
    labels = [
        feedback(1, 0, "b", "positive"),
        feedback(0, 1, "a", "positive"),  # a second label for "a", read first: the first wins
        feedback(0, 0, "a", "negative"),
        feedback(0, 2, "c", "angry"),  # not a label of the task
        feedback(0, 3, "d", "positive", source="llm"),  # another source
        feedback(1, 1, "gone", "positive"),  # no event in the input range
        feedback(1, 2, "blank", "negative"),  # its event has no text
        TopicRecord(1, 3, b"not json"),
    ]
    events = [event(0, 0, "a", "fine film"), event(1, 0, "b", "dull film"),
              event(1, 1, "a", "another text for a"), TopicRecord(1, 2, b'{"id":"blank"}'),
              event(0, 1, "d", "good"), event(0, 2, "unlabelled", "never read")]
    result = join_history(labels, lambda: events, CODEC, TASK, feedback_sources("ground_truth"))
    negative, positive = TASK.labels.index("negative"), TASK.labels.index("positive")
    # In partition and offset order of the labels; each text from its id's first event.
    assert result.history.events == [LabelledEvent("a", "fine film", negative),
                                     LabelledEvent("b", "dull film", positive)]
    assert result.sources == ["ground_truth", "ground_truth"]
    assert result.history.read == len(labels)
    assert result.skip_counts() == {"malformed": 1, "no_text": 2, "no_label": 0,
                                    "unknown_label": 1, "duplicate_id": 1, "no_features": 0,
                                    "other_source": 1}


def test_the_llm_source_takes_the_llm_answers_and_audits() -> None:
    labels = [feedback(0, 0, "a", "negative", "llm"), feedback(0, 1, "b", "positive", "audit"),
              feedback(0, 2, "c", "positive")]
    events = [event(0, i, name, f"text {name}") for i, name in enumerate("abc")]
    result = join_history(labels, lambda: events, CODEC, TASK, feedback_sources("llm"))
    assert [e.id for e in result.history.events] == ["a", "b"]
    assert result.sources == ["llm", "audit"]
    assert result.skip_counts()["other_source"] == 1
    with pytest.raises(ConfigurationError, match="ground_truth or llm"):
        feedback_sources("llm:gpt")


def test_offsets_are_reported_per_topic_and_partition() -> None:
    offsets = TopicOffsets({"feedback": {1: (4, 9), 0: (0, 3)}})
    assert offsets.as_json() == {"feedback": {"0": [0, 3], "1": [4, 9]}}


def test_the_seen_set_makes_the_learner_drop_the_trained_demonstrations() -> None:
    events = [LabelledEvent(str(i), f"text {i}", i % 2) for i in range(50)]
    saved = seen_set(events, ["ground_truth"] * 50)
    guard = LearningGuard(TASK.labels, None)
    assert guard.load({SEEN_META_KEY: saved})
    demos = [Demonstration(Event("3", "text 3"), 1, "ground_truth"),  # trained: dropped
             Demonstration(Event("3", "text 3"), 0, "llm"),  # another source: learned
             Demonstration(Event("new", "text"), 0, "ground_truth")]
    screened = guard.screen(demos)
    assert [(d.event.id, d.source) for d in screened.learn] == [("3", "llm"),
                                                                 ("new", "ground_truth")]
    assert screened.skipped["duplicate"] == 1
    # Past the learner's capacity, the last events are the ones kept.
    kept = LearningGuard(TASK.labels, None)
    assert kept.load({SEEN_META_KEY: seen_set(events, ["llm"] * 50, capacity=10)})
    assert len(kept.dedup) == 10
    assert kept.dedup.check("49", "llm", 1) == "duplicate"
    assert kept.dedup.check("0", "llm", 0) == "new"


def run_train(args: list[str], **env: str) -> Any:
    return CliRunner().invoke(cli, ["train", *args], env=env)


def history_file(tmp_path: Path) -> Path:
    return write_stream(tmp_path / "history.jsonl", [dict(r) for r in sentiment_stream(80)])


def test_the_command_refuses_what_cannot_work_before_training(tmp_path: Path) -> None:
    stream = history_file(tmp_path)
    cases = [
        ([], "--input FILE or --from-kafka"),
        (["--input", str(stream), "--from-kafka", "--out", "x"], "--input FILE or --from-kafka"),
        (["--input", str(stream)], "--out FILE, --publish"),
        (["--from-kafka", "--out", "x", "--limit", "5"], "--limit"),
        (["--input", str(stream), "--publish", "--bootstrap", "127.0.0.1:1"],
         "STREAMCASCADE_STATE_SIGNING_KEY"),
        (["--from-kafka", "--out", "x"], "no Kafka cluster"),
    ]
    for args, message in cases:
        result = run_train([*args, "--task", "imdb"], STREAMCASCADE_BOOTSTRAP="")
        assert result.exit_code != 0 and message in result.output, (args, result.output)


def test_a_cluster_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    for args in (["--from-kafka", "--out", str(tmp_path / "s.bin")],
                 ["--input", str(history_file(tmp_path)), "--publish"]):
        result = run_train([*args, "--task", "imdb", "--bootstrap", "127.0.0.1:9",
                            "--kafka-timeout", "1"], STREAMCASCADE_STATE_SIGNING_KEY=KEY)
        assert result.exit_code == 1, result.output
        assert "no Kafka cluster answered at 127.0.0.1:9" in result.output
        assert not (tmp_path / "s.bin").exists()


class FakeRelease:
    """``release_state`` without a broker: builds the state of the next version."""

    def __init__(self, version: int = 7) -> None:
        self.version = version
        self.built: list[tuple[bytes, dict[str, Any]]] = []

    def __call__(self, bootstrap: str, topics: Any, signer: Any, build: Any,
                 timeout: float = 30.0) -> int:
        self.built.append(build(self.version))
        return self.version


def test_publish_sends_the_trained_state_as_the_next_version_with_its_seen_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = FakeRelease()
    monkeypatch.setattr("streamcascade.commands.train.release_state", release)
    monkeypatch.setattr("streamcascade.operators.topics.partition_counts", lambda *a: {})
    stream = history_file(tmp_path)
    report = tmp_path / "report.json"
    result = run_train(["--input", str(stream), "--task", "imdb", "--publish", "--bootstrap",
                        "broker:9092", "--json", str(report), "--epochs", "1",
                        "--stage-option", "hashed.n_features=4096"],
                       STREAMCASCADE_STATE_SIGNING_KEY=KEY)
    assert result.exit_code == 0, result.output
    assert "version 7 on model-state" in result.output
    figures = json.loads(report.read_text())
    assert figures["published"] == {"topic": "model-state", "version": 7}
    [(payload, meta)] = release.built
    state_meta, _ = unpack_state(payload)
    assert state_meta["version"] == 7  # a worker serving it reports the published version
    assert meta["task"] == "imdb" and meta["stages"] == ["hashed"]
    assert meta["training"]["rows"] == figures["rows"] == 80
    assert meta["training"]["engine"] == "duckdb" and np.isfinite(meta["training"]["loss"])
    guard = LearningGuard(TASK.labels, None)
    assert guard.load(meta) and len(guard.dedup) == 80
    first = sentiment_stream(80)[0]
    assert guard.dedup.check(str(first["id"]), "ground_truth", 0) == "duplicate"
    training = training_metadata(payload)
    assert training is not None and training["seen_ids"] == 80
    llm = RecordedLLM(stream, "oracle", TASK)
    cascade = build_cascade(TASK, llm, CascadeConfig(), hashed={"n_features": 4096})
    cascade.load_state(payload)
    assert cascade.version == 7


def test_a_run_stopped_half_way_publishes_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    release = FakeRelease()
    monkeypatch.setattr("streamcascade.commands.train.release_state", release)
    monkeypatch.setattr("streamcascade.operators.topics.partition_counts", lambda *a: {})

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("streamcascade.commands.train.train_from_history", interrupted)
    result = run_train(["--input", str(history_file(tmp_path)), "--task", "imdb", "--publish",
                        "--bootstrap", "broker:9092"], STREAMCASCADE_STATE_SIGNING_KEY=KEY)
    assert result.exit_code == 1 and "Aborted" in result.output
    assert release.built == []


def test_a_workers_config_file_names_the_cluster_and_topics(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[worker]\nbootstrap = "127.0.0.1:9"\ntask_name = "imdb"\n'
                      'input_topic = "comments"\nbatch_size = 50\n\n[cascade]\nwarmup = 10\n')
    result = run_train(["--config", str(config), "--from-kafka", "--out", str(tmp_path / "s"),
                        "--kafka-timeout", "1"])
    assert result.exit_code == 1 and "no Kafka cluster answered at 127.0.0.1:9" in result.output
