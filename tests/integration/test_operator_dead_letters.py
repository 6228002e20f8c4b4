"""Bad records become dead letters with their reason and position; the stream goes on."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

from operator_harness import OperatorRun, json_id, rows


def test_bad_events_and_feedback_become_dead_letters_while_the_stream_goes_on(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    stream = rows(300)
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, partitions=1,
                      worker_args=("--max-payload-bytes", "2000", "--decision-ttl", "3"))
    good = run.event_records(stream)
    bad = {
        b"{this is not json": "malformed_json",
        b'{"id": "e1", "text": ""}': "missing_text",
        b'{"text": "an event without an id"}': "missing_id",
        json.dumps({"id": "e2", "text": "x" * 5000}).encode(): "oversized_payload",
    }
    # Bad records in the middle of the stream, so good ones follow each of them.
    records = good[:100] + [(b"bad", value) for value in bad] + good[100:]
    try:
        run.start_worker()
        run.produce(records)
        assert run.wait_answered({r.id for r in stream}, timeout=60), run.logs()
        # Feedback: a label outside the task's labels, and a label for an event that never comes.
        run.send_feedback([(stream[0].id, "offensive")])
        run.send_feedback([("no-such-event", "hate")])
        # It waits un-acked for its event (the 3 s TTL), and the gauge of held records says so.
        seen_held = 0.0
        for _ in range(25):
            seen_held = run.metric(0, "streamcascade_acks_held", 'stream="feedback"')
            if seen_held >= 1:
                break
            time.sleep(0.2)
        assert seen_held >= 1, seen_held
        wanted = {"unknown_label", "feedback_unmatched"}

        def letters_of(reasons: set[str]) -> list[dict[str, object]]:
            return [d for d in run.dead if d["reason"] in reasons]

        for _ in range(100):
            run.poll()
            if {d["reason"] for d in letters_of(wanted)} == wanted:
                break
        # Everything is answered, and the feedback that waited has expired: no record is held
        # un-acked on either stream (the gauge is updated every second).
        for _ in range(30):
            held = [run.metric(0, "streamcascade_acks_held", f'stream="{s}"')
                    for s in ("input", "feedback")]
            if held == [0.0, 0.0]:
                break
            time.sleep(0.2)
        assert held == [0.0, 0.0], held
    finally:
        run.stop_all()
    by_original = {base64.b64decode(str(d["original"])): d for d in run.dead}
    for value, reason in bad.items():
        letter = by_original[value]
        assert letter["reason"] == reason
        assert letter["topic"] == run.topics["input"] and letter["partition"] == 0
        assert 100 <= int(str(letter["offset"])) < 104  # where the bad records were produced
    feedback_letters = {d["reason"]: d for d in run.dead if d["topic"] == run.topics["feedback"]}
    assert set(feedback_letters) == {"unknown_label", "feedback_unmatched"}
    assert json.loads(base64.b64decode(str(feedback_letters["feedback_unmatched"]["original"])))[
        "id"] == "no-such-event"
    # The stream went on: every good event after the bad ones has its output.
    failed = {json_id(d) for d in run.dead if d["reason"] == "llm_failed"}
    assert all(r.id in run.outputs or r.id in failed for r in stream[100:])
    assert sum(1 for r in stream if r.id in run.outputs) >= 290
    # The harness made the dead-letter topic with the broker's default limit: the worker read it
    # and cuts originals to fit (none of these needed it).
    assert "takes records of at most 1048588 bytes" in (tmp_path / "worker-0.log").read_text()


def test_the_dead_letter_topic_takes_dead_letters_of_large_records(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """Made by the worker, the dead-letter topic takes dead letters of records near the broker's
    default limit (base64 makes them 4/3 as big); one made elsewhere is read for its limit."""
    import uuid

    from confluent_kafka.admin import AdminClient

    from streamcascade.operators import dead_letters as dl
    from streamcascade.operators.topics import (
        OperatorTopics,
        ensure_dead_letter_topic,
        ensure_topics,
        topic_max_bytes,
    )

    name, attached = f"dlq-{uuid.uuid4().hex[:8]}", f"dlq-attach-{uuid.uuid4().hex[:8]}"
    try:
        ensure_topics(kafka_bootstrap, OperatorTopics(new_topic(1), new_topic(1), dlq=name))
        assert topic_max_bytes(kafka_bootstrap, name) == dl.MAX_BYTES
        # What attach() does at start for a dead-letter topic nobody made.
        assert topic_max_bytes(kafka_bootstrap, attached) is None
        ensure_dead_letter_topic(kafka_bootstrap, attached)
        assert topic_max_bytes(kafka_bootstrap, attached) == dl.MAX_BYTES
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([name, attached])
    small = new_topic(1, **{"max.message.bytes": "1048588"})
    ensure_dead_letter_topic(kafka_bootstrap, small)  # one made elsewhere is left as it is
    assert topic_max_bytes(kafka_bootstrap, small) == 1048588
    assert topic_max_bytes(kafka_bootstrap, "no-such-topic-" + name) is None
