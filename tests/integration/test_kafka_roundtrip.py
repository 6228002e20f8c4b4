"""Events round-trip through a real Kafka broker, and committed offsets are honoured.

Two clients: confluent-kafka (librdkafka) and a Faust agent on the aiokafka transport. In both,
a consumer that stops after committing and a new one in the same group must resume right after
the last committed offset: nothing replayed, nothing skipped. Every check reads back what the
broker stored, so without a broker these tests fail (they time out waiting for records).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import faust
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamcascade.kafka import check_cluster

NewTopic = Callable[..., str]


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, key=value.encode(), value=value.encode(), on_delivery=on_delivery)
    assert producer.flush(30) == 0, "records still undelivered after 30s"
    assert not errors, errors


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )


def _poll_values(consumer: Consumer, count: int, timeout: float = 30.0) -> list[Message]:
    """Exactly ``count`` records, or fail after ``timeout`` seconds."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        messages.append(msg)
    assert len(messages) == count, f"got {len(messages)} of {count} records in {timeout}s"
    return messages


def _values(messages: list[Message]) -> list[str]:
    return [(m.value() or b"").decode() for m in messages]


def _keys(messages: list[Message]) -> list[str]:
    return [(m.key() or b"").decode() for m in messages]


def _committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The offset the broker holds for ``group`` on ``topic``, read by the admin API."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, partition)])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return int(result.topic_partitions[0].offset)


def test_broker_answers(kafka_bootstrap: str) -> None:
    assert check_cluster(kafka_bootstrap) >= 1


def test_confluent_kafka_resumes_after_last_commit(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    topic = new_topic(partitions=1)
    group = f"roundtrip-{uuid.uuid4().hex[:8]}"
    values = [f"event-{i}" for i in range(20)]
    _produce(kafka_bootstrap, topic, values)

    first = _consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    try:
        head = _poll_values(first, 8)
        first.commit(message=head[-1], asynchronous=False)  # commits offset 8: "next to read"
    finally:
        first.close()
    assert _values(head) == values[:8]
    assert _committed(kafka_bootstrap, group, topic) == 8

    second = _consumer(kafka_bootstrap, group)
    second.subscribe([topic])
    try:
        rest = _poll_values(second, 12)
        second.commit(asynchronous=False)
        # Nothing beyond the 20 produced arrives.
        assert second.poll(1.0) is None
    finally:
        second.close()
    assert [m.offset() for m in rest] == list(range(8, 20))
    assert _values(rest) == values[8:]
    assert _keys(rest) == values[8:]
    assert _committed(kafka_bootstrap, group, topic) == 20


def _faust_app(app_id: str, bootstrap: str, datadir: Path, source: str, sink: str) -> faust.App:
    """A Faust app whose one agent forwards every value of ``source`` to ``sink`` in upper case."""
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        broker_client_id=app_id,
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        topic_replication_factor=1,
        topic_partitions=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=1,
        broker_commit_interval=0.2,
    )
    source_topic = app.topic(source, key_type=bytes, value_type=bytes, value_serializer="raw")
    sink_topic = app.topic(sink, key_type=bytes, value_type=bytes, value_serializer="raw")

    @app.agent(source_topic)
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for key, value in stream.items():
            await sink_topic.send(key=key, value=value.upper())

    return app


async def _run_app_until(app: faust.App, sink_reader: Consumer, count: int) -> list[Message]:
    """Start ``app`` in this event loop, collect ``count`` records from the sink, stop ``app``."""
    await app.start()
    try:
        messages: list[Message] = []
        deadline = time.monotonic() + 60.0
        while len(messages) < count and time.monotonic() < deadline:
            msg = await asyncio.to_thread(sink_reader.poll, 0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                messages.append(msg)
        assert len(messages) == count, f"Faust forwarded {len(messages)} of {count} records"
        # Faust commits on an interval; wait for the commit of the last record to land.
        await asyncio.sleep(0.5)
    finally:
        await app.stop()
    return messages


async def test_faust_agent_forwards_and_resumes(
    kafka_bootstrap: str, new_topic: NewTopic, tmp_path: Path
) -> None:
    source = new_topic(partitions=1, prefix="faust-source")
    sink = new_topic(partitions=1, prefix="faust-sink")
    app_id = f"sc-roundtrip-{uuid.uuid4().hex[:8]}"
    reader = _consumer(kafka_bootstrap, f"{app_id}-reader")
    reader.subscribe([sink])
    try:
        first_batch = [f"first-{i}" for i in range(10)]
        await asyncio.to_thread(_produce, kafka_bootstrap, source, first_batch)
        app = _faust_app(app_id, kafka_bootstrap, tmp_path / "run1", source, sink)
        got = await _run_app_until(app, reader, len(first_batch))
        assert _values(got) == [v.upper() for v in first_batch]
        assert _committed(kafka_bootstrap, app_id, source) == len(first_batch)

        # A new instance of the app (same id, so the same consumer group) must start after the
        # committed offset: only the second batch comes out, once.
        second_batch = [f"second-{i}" for i in range(5)]
        await asyncio.to_thread(_produce, kafka_bootstrap, source, second_batch)
        app = _faust_app(app_id, kafka_bootstrap, tmp_path / "run2", source, sink)
        got = await _run_app_until(app, reader, len(second_batch))
        assert _values(got) == [v.upper() for v in second_batch]
        assert _keys(got) == second_batch
        assert await asyncio.to_thread(reader.poll, 1.0) is None  # nothing replayed
        assert _committed(kafka_bootstrap, app_id, source) == 15
    finally:
        reader.close()
