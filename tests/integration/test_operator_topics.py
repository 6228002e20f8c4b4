"""``streamcascade worker`` checks and creates its topics at start as ``attach`` does (the README
test runs the ``attach`` side): owned topics made as they must be, a missing input refused
before the worker's consumer could have the broker create it."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from operator_harness import DATA, LLM

from streamcascade.benchkit.stream_io import start_worker, stop_worker, worker_command
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.options import STATE_MAX_BYTES
from streamcascade.operators.topics import partition_counts


def run_worker(bootstrap: str, tmp_path: Path, topics: dict[str, str], *extra: str
               ) -> subprocess.Popen[bytes]:
    argv = worker_command(bootstrap, f"topics-{uuid.uuid4().hex[:8]}", topics,
                          ["--task", "hatespeech", "--llm", LLM, "--llm-records", str(DATA),
                           *extra])
    return start_worker(argv, {"STREAMCASCADE_STATE_SIGNING_KEY": secrets.token_hex(32)},
                        tmp_path / "worker.log")


def names(prefix: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {flag: f"{prefix}-{flag}-{run}"
            for flag in ("input", "output", "feedback", "dlq", "state-topic")}


def configs(bootstrap: str, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})  # (alive until the answer came)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    found = admin.describe_configs([resource])[resource].result(timeout=30)
    return {key: entry.value for key, entry in found.items()}


def delete(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics).values():
        with contextlib.suppress(Exception):  # (not all exist)
            future.result(timeout=15)


def test_the_worker_creates_the_topics_it_owns_as_they_must_be(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topics = {**names("owned"), "input": new_topic(3, prefix="owned-input")}
    owned = [t for flag, t in topics.items() if flag != "input"]
    worker = run_worker(kafka_bootstrap, tmp_path, topics)
    log = tmp_path / "worker.log"
    try:
        deadline = time.monotonic() + 60
        while "answering" not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.3)
        stop_worker(worker)
        counts = partition_counts(kafka_bootstrap)
        state, dead_letters = (configs(kafka_bootstrap, topics[f]) for f in ("state-topic", "dlq"))
    finally:
        stop_worker(worker)
        delete(kafka_bootstrap, owned)
    # (Logged at INFO although the worker's --loglevel is warn: the operator's own lines.)
    assert f"answering {topics['input']} partitions [0, 1, 2]" in log.read_text()
    assert [counts.get(topics[f]) for f in ("output", "feedback", "dlq", "state-topic")] \
        == [3, 3, 1, 1]
    assert state["cleanup.policy"] == "compact"
    assert int(state["max.message.bytes"]) == STATE_MAX_BYTES
    assert int(dead_letters["max.message.bytes"]) == dl.MAX_BYTES


def test_the_worker_refuses_a_missing_input_before_subscribing_to_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = names("refused")
    worker = run_worker(kafka_bootstrap, tmp_path, topics, "--no-create-topics")
    try:
        code = worker.wait(60)
    finally:
        stop_worker(worker)
    text = (tmp_path / "worker.log").read_text(errors="replace")
    assert code != 0, text[-4000:]
    error = text[text.index("the operator cannot start"):]
    for topic in topics.values():
        assert f"--create --topic {topic} " in error
    assert "--wait-for-input" in error and "--create-topics" in error
    # Its consumer never asked for the input: the broker (auto.create.topics.enable) made none.
    existing = partition_counts(kafka_bootstrap)
    assert not set(topics.values()) & set(existing), sorted(set(topics.values()) & set(existing))
