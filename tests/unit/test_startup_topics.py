"""The start-up check of the operator's topics, against a cluster stood in by a dict, and the
operator's log lines about its work."""

from __future__ import annotations

import logging

import pytest

from streamcascade.errors import ConfigurationError
from streamcascade.operators import topics as topics_module
from streamcascade.operators.activity import ActivityLog
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.topics import OperatorTopics, prepare_topics

TOPICS = OperatorTopics("comments", "labels", feedback="feedback", dlq="dead", state="state",
                        demonstrations="app-demonstrations")


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Topic -> partition count; what :func:`prepare_topics` creates is added to it."""
    existing: dict[str, int] = {}

    def create(_bootstrap: str, wanted: dict[str, tuple[int, dict[str, str]]],
               known: dict[str, int], _timeout: float) -> None:
        existing.update({name: n for name, (n, _) in wanted.items() if name not in known})

    monkeypatch.setattr(topics_module, "partition_counts", lambda *_a, **_k: dict(existing))
    monkeypatch.setattr(topics_module, "_create_missing", create)
    return existing


def test_owned_topics_are_created_with_the_inputs_partition_count(
    cluster: dict[str, int]
) -> None:
    cluster["comments"] = 4
    assert prepare_topics("k:9092", TOPICS) == {"comments": 4, "labels": 4, "feedback": 4,
                                                "dead": 1, "state": 1, "app-demonstrations": 1}
    assert cluster["feedback"] == 4


def test_a_missing_input_is_named_and_nothing_is_created(cluster: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError) as refused:
        prepare_topics("k:9092", TOPICS)
    message = str(refused.value)
    assert "kafka-topics.sh --bootstrap-server k:9092 --create --topic comments --partitions 1" \
        in message
    assert "labels" not in message and "wait_for_input" in message
    assert cluster == {}


def test_without_creation_every_missing_topic_is_named_in_one_error(
    cluster: dict[str, int]
) -> None:
    cluster.update({"comments": 2, "labels": 2})
    with pytest.raises(ConfigurationError) as refused:
        prepare_topics("k:9092", TOPICS, create=False)
    lines = str(refused.value).splitlines()
    named = [line.split()[0] for line in lines if line.startswith("  ") and "(" in line]
    assert named == ["feedback", "dead", "state", "app-demonstrations"]
    assert any("--topic feedback --partitions 2" in line for line in lines)
    assert any("--config cleanup.policy=compact --config max.message.bytes=" in line
               for line in lines)
    assert cluster == {"comments": 2, "labels": 2}


def test_a_feedback_topic_not_co_partitioned_is_refused(cluster: dict[str, int]) -> None:
    cluster.update({"comments": 2, "feedback": 3})
    with pytest.raises(ConfigurationError, match=r"has 3 partitions .* has 2: they must be equal"):
        prepare_topics("k:9092", TOPICS)
    assert "labels" not in cluster


def test_the_partitions_answered_are_logged_when_they_change(
    caplog: pytest.LogCaptureFixture
) -> None:
    activity = ActivityLog(OperatorMetrics(["hashed", "llm"]), "comments")
    caplog.set_level(logging.INFO, logger="streamcascade.operators.activity")
    activity.assigned([("comments", 1), ("feedback", 1), ("comments", 0)])
    activity.announce()
    activity.announce()  # no change: nothing said
    activity.assigned([])
    activity.announce()
    assert [r.getMessage() for r in caplog.records] == [
        "answering comments partitions [0, 1]",
        "answering no partition of comments (the group's other workers hold them)"]
