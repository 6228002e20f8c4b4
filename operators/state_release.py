"""Publishing a model state made away from the fleet (``streamcascade train --publish``) as the
fleet's next signed version, as the learner publishes its own.

The version is one above the newest one signed with the fleet's key on the state topic (1 on an
empty topic), and the state's own version is set to it by the caller, so that a worker serving it
reports that version and the learner goes on counting from it. A worker loads only a version above
the one it serves: a new worker starts from this one, and so does every running worker whose
model has not moved past it.

The demonstrations the state was trained on must not be learned again online: the state's
metadata carries them as the learner's seen-set (:func:`seen_set`, under
:data:`~.learning_guard.SEEN_META_KEY`), so the learner that loads it drops a demonstration of the
same event and source when the deployment reads it (again) from its topics, as it drops the
repeats of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.models.relational.history import LabelledEvent
from streamcascade.operators.demo_dedup import DEFAULT_CAPACITY, DemonstrationDedup
from streamcascade.operators.state_store import STATE_KEY, StateSigner
from streamcascade.operators.topic_history import TopicRangeReader
from streamcascade.operators.topics import OperatorTopics, ensure_state_topic

#: What builds the state of a version: its state bytes and its metadata.
BuildState = Callable[[int], tuple[bytes, dict[str, Any]]]


def seen_set(events: Sequence[LabelledEvent], sources: Sequence[str],
             capacity: int = DEFAULT_CAPACITY) -> str:
    """The learner's saved seen-set of ``events`` (``sources[i]``: the source of event ``i``'s
    label). Past ``capacity``, the learner's own, the last events are kept, as the learner keeps
    its most recent keys."""
    dedup = DemonstrationDedup(capacity)
    for event, source in zip(events, sources, strict=True):
        dedup.check(event.id, source, event.label)
    return dedup.save()


def newest_version(bootstrap: str, topic: str, signer: StateSigner,
                   timeout: float = 30.0) -> int:
    """The newest version on ``topic`` signed by ``signer``'s key; -1 on an empty topic. A topic
    that holds states and none of them signed with this key is an error: a version published with
    it would be refused by every worker."""
    reader = TopicRangeReader(bootstrap, timeout)
    newest, refused = -1, 0
    try:
        for record in reader.read(topic, reader.ranges(topic)):
            try:
                newest = max(newest, signer.verify(record.value).version)
            except ModelStateError:
                refused += 1
    finally:
        reader.close()
    if refused and newest < 0:
        raise ConfigurationError(
            f"state topic {topic!r} holds {refused} state(s) and none is signed with this key: "
            f"check STREAMCASCADE_STATE_SIGNING_KEY (the fleet's key)")
    return newest


def release_state(bootstrap: str, topics: OperatorTopics, signer: StateSigner,
                  build: BuildState, timeout: float = 30.0) -> int:
    """Publish ``build(version)`` as the fleet's next version; returns the version once the
    broker has the record."""
    from confluent_kafka import KafkaException, Producer

    if topics.state is None:
        raise ConfigurationError("publishing needs the deployment's state topic (state_topic)")
    ensure_state_topic(bootstrap, topics, timeout)
    version = max(newest_version(bootstrap, topics.state, signer, timeout), 0) + 1
    payload, meta = build(version)
    blob = signer.sign(version, payload, meta)
    if len(blob) > topics.state_max_bytes:
        raise ConfigurationError(f"the state is {len(blob)} bytes, more than the state topic "
                                 f"takes ({topics.state_max_bytes})")
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "message.max.bytes": topics.state_max_bytes + 1024 * 1024,
                         "message.timeout.ms": int(timeout * 1000)})
    try:
        producer.produce(topics.state, key=STATE_KEY, value=blob, on_delivery=delivered)
    except (KafkaException, BufferError) as exc:
        raise ConfigurationError(f"could not publish to {topics.state!r}: {exc}") from None
    left = producer.flush(timeout + 5)
    if left or failures:
        reason = failures[0] if failures else f"not delivered within {timeout:g} s"
        raise ConfigurationError(f"could not publish version {version} to state topic "
                                 f"{topics.state!r} on {bootstrap}: {reason}")
    return version
