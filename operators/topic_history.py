"""A deployment's history on Kafka as labelled events to train from: its input and feedback
topics, each partition read from its start up to the end it had when the run began.

Feedback records carry an event's id, label and source, not its text: the text is in the input
topic. So the feedback topic is read first, keeping the labels of the chosen sources, then the
input topic, keeping the texts of the ids that have a label, and the two are joined by id. The
offsets read are recorded (:class:`TopicOffsets`), so that a trained state says which records it
covers; records written after the run began are left for the online learner.

A feedback record that cannot teach is counted under its reason, as a file's row is
(:data:`~streamcascade.models.relational.history.SKIP_REASONS`): not a feedback record
(``malformed``), a label outside the task's (``unknown_label``), an id labelled before by the
chosen sources (``duplicate_id``: the first record, in partition and offset order, wins, as the
online learner's "first wins"), an id whose event is not in the input range or has no text
(``no_text``); and one from another source than the chosen (``other_source``).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from streamcascade.errors import ConfigurationError, RecordError
from streamcascade.models.relational.history import SKIP_REASONS, History, LabelledEvent
from streamcascade.models.tasks import Task
from streamcascade.models.types import SOURCE_AUDIT, SOURCE_GROUND_TRUTH, SOURCE_LLM
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.topics import partition_counts

#: The skip reasons of a Kafka history: a file's, and feedback from a source not chosen.
TOPIC_SKIP_REASONS = (*SKIP_REASONS, "other_source")
#: The feedback sources each ``--label-source`` takes: the LLM's answers include its audits.
LABEL_SOURCES = {"ground_truth": (SOURCE_GROUND_TRUTH,), "llm": (SOURCE_LLM, SOURCE_AUDIT)}


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """One record of a topic, where it was read."""

    partition: int
    offset: int
    value: bytes | None


#: Per partition, the offsets ``[start, end)`` read.
Ranges = dict[int, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class TopicOffsets:
    """The offsets a history covers: per topic, per partition, ``[start, end)``."""

    ranges: dict[str, Ranges]

    def as_json(self) -> dict[str, dict[str, list[int]]]:
        return {topic: {str(p): [start, end] for p, (start, end) in sorted(ranges.items())}
                for topic, ranges in self.ranges.items()}


@dataclass
class TopicHistory:
    """The labelled events of a Kafka history, with the offsets it covers and the skip counts;
    ``sources[i]`` is the feedback source of ``history.events[i]``."""

    history: History
    sources: list[str] = field(default_factory=list)
    offsets: TopicOffsets = field(default_factory=lambda: TopicOffsets({}))

    def skip_counts(self) -> dict[str, int]:
        skipped = self.history.skipped
        return {reason: int(skipped.get(reason, 0)) for reason in TOPIC_SKIP_REASONS}


def feedback_sources(label_source: str) -> tuple[str, ...]:
    """The feedback sources that teach under ``label_source``; a clear error for another."""
    try:
        return LABEL_SOURCES[label_source]
    except KeyError:
        raise ConfigurationError(
            f"from Kafka, --label-source is ground_truth or llm (the answers the deployment's "
            f"LLM wrote to the feedback topic), not {label_source!r}") from None


@dataclass(frozen=True, slots=True)
class _Label:
    position: tuple[int, int]
    label: int
    source: str


def join_history(feedback: Iterable[TopicRecord],
                 read_events: Callable[[], Iterable[TopicRecord]], codec: RecordCodec,
                 task: Task, sources: tuple[str, ...]) -> TopicHistory:
    """Join feedback records with the events they label. ``read_events()`` yields the input
    records; it is called once the feedback is read, and only the texts of the ids that have a
    label are kept."""
    skipped: Counter[str] = Counter()
    labels: dict[str, _Label] = {}
    read = 0
    for record in feedback:  # (partitions interleaved: the first is found by position)
        read += 1
        try:
            item = codec.decode_feedback(record.value, task.labels)
        except RecordError as exc:
            skipped["unknown_label" if exc.reason == dl.UNKNOWN_LABEL else "malformed"] += 1
            continue
        if item.source not in sources:
            skipped["other_source"] += 1
            continue
        label = _Label((record.partition, record.offset), item.label, item.source)
        earlier = labels.get(item.event_id)
        if earlier is not None:
            skipped["duplicate_id"] += 1
            if earlier.position < label.position:
                continue
        labels[item.event_id] = label
    texts = _texts(read_events(), codec, labels)
    history = History([], read=read, skipped=skipped)
    sources_of: list[str] = []
    for event_id, label in sorted(labels.items(), key=lambda item: item[1].position):
        text = texts.get(event_id)
        if text is None:
            skipped["no_text"] += 1
            continue
        history.events.append(LabelledEvent(event_id, text, label.label))
        sources_of.append(label.source)
    return TopicHistory(history, sources_of)


def _texts(records: Iterable[TopicRecord], codec: RecordCodec,
           wanted: dict[str, _Label]) -> dict[str, str]:
    """The text of each wanted id, from its first event record that has one."""
    texts: dict[str, str] = {}
    for record in records:
        try:
            event = codec.decode_event(record.value)
        except RecordError:  # (a dead letter online: no text to learn)
            continue
        if event.id in wanted and event.id not in texts:
            texts[event.id] = event.text
    return texts


class TopicRangeReader:
    """Reads whole partitions of topics up to fixed end offsets, outside any consumer group.

    ``timeout`` bounds each wait for the cluster: its metadata, the offsets, and any stretch
    without a record while some partition is not read to its end.
    """

    def __init__(self, bootstrap: str, timeout: float = 30.0) -> None:
        from confluent_kafka import Consumer

        self.bootstrap = bootstrap
        self.timeout = timeout
        self.counts = partition_counts(bootstrap, timeout)  # (a clear error if none answers)
        self._consumer: Any = Consumer({
            "bootstrap.servers": bootstrap,
            # (assign() joins no group; the client wants an id all the same)
            "group.id": f"streamcascade-train-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        })

    def ranges(self, topic: str) -> Ranges:
        """Each partition's ``[start, end)`` now: what :meth:`read` reads."""
        from confluent_kafka import KafkaException, TopicPartition

        if topic not in self.counts:
            raise ConfigurationError(f"topic {topic!r} does not exist on {self.bootstrap}")
        ranges: Ranges = {}
        for partition in range(self.counts[topic]):
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=self.timeout)
            except KafkaException as exc:
                raise ConfigurationError(f"cannot read the offsets of {topic!r} partition "
                                         f"{partition} on {self.bootstrap}: {exc}") from None
            ranges[partition] = (int(low), int(high))
        return ranges

    def read(self, topic: str, ranges: Ranges) -> Iterator[TopicRecord]:
        """The records of ``topic`` in ``ranges``, partitions interleaved."""
        from confluent_kafka import KafkaError, TopicPartition

        todo = {p: end for p, (start, end) in ranges.items() if end > start}
        if not todo:
            return
        self._consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in todo])
        last_record = time.monotonic()
        try:
            while todo:
                messages = self._consumer.consume(num_messages=2000, timeout=0.5)
                if messages:
                    last_record = time.monotonic()
                elif time.monotonic() - last_record > self.timeout:
                    raise ConfigurationError(
                        f"no record of {topic!r} came for {self.timeout:g} s from "
                        f"{self.bootstrap}; partitions {sorted(todo)} were not read to their end")
                for message in messages:
                    partition, offset = int(message.partition()), int(message.offset())
                    end = todo.get(partition)
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            if end is not None and offset >= end:
                                del todo[partition]
                            continue
                        raise ConfigurationError(f"reading {topic!r} from {self.bootstrap}: "
                                                 f"{error.str()}")
                    if end is None or offset >= end:  # (written after the run began)
                        continue
                    yield TopicRecord(partition, offset, message.value())
                    if offset >= end - 1:
                        del todo[partition]
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


def read_topic_history(bootstrap: str, input_topic: str, feedback_topic: str,
                       codec: RecordCodec, task: Task, label_source: str = "ground_truth",
                       timeout: float = 30.0) -> TopicHistory:
    """The labelled events of a deployment's topics, each partition read from its start to the
    end it had when this began (both topics' ends taken first)."""
    sources = feedback_sources(label_source)
    reader = TopicRangeReader(bootstrap, timeout)
    try:
        offsets = TopicOffsets({feedback_topic: reader.ranges(feedback_topic),
                                input_topic: reader.ranges(input_topic)})
        result = join_history(
            reader.read(feedback_topic, offsets.ranges[feedback_topic]),
            lambda: reader.read(input_topic, offsets.ranges[input_topic]),
            codec, task, sources)
    finally:
        reader.close()
    result.offsets = offsets
    return result
