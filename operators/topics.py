"""The operator's topics: one description, and creating and checking them (Kafka admin API).

:class:`OperatorTopics` is what ``streamcascade.attach`` and ``streamcascade worker`` build (the
settings give its values), what the runtime subscribes to and writes, and what
:func:`prepare_topics` checks at start: the input must exist (it is the user's), the topics the
operator owns are created where missing, each as it must be (:meth:`OperatorTopics.specs`), and
every problem is told at once, each with the command line that fixes it.

The feedback topic must be co-partitioned with the input topic (same partition count, keyed by
event id) so that feedback reaches the worker that answered its event; a mismatch is refused here
rather than discovered as a stream of ``feedback_unmatched`` dead letters.

>>> topics = OperatorTopics("comments", "labels", feedback="comment-feedback", state="state")
>>> [(s.name, s.role, s.partitions) for s in topics.specs(n_input=3)]
... # doctest: +NORMALIZE_WHITESPACE
[('comments', 'input', 3), ('labels', 'output', 3), ('comment-feedback', 'feedback', 3),
 ('state', 'model state', 1)]
>>> topics.specs(3)[-1].create_command("kafka:9092")
... # doctest: +NORMALIZE_WHITESPACE
'kafka-topics.sh --bootstrap-server kafka:9092 --create --topic state --partitions 1
 --config cleanup.policy=compact --config max.message.bytes=67108864'
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from streamcascade.errors import ConfigurationError
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.options import STATE_MAX_BYTES

#: How a missing topic's create command starts: Apache Kafka's own tool.
KAFKA_TOPICS = "kafka-topics.sh"
#: The dead-letter topic's configuration: room for the largest dead letter.
DEAD_LETTER_CONFIG = {"max.message.bytes": str(dl.MAX_BYTES)}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic the operator uses: what it is for, and how it must be made."""

    name: str
    #: "input", "output", "feedback", "dead letters", "model state" or "demonstrations".
    role: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    #: What the operator needs of it, in words (for an error).
    needs: str = ""

    def create_command(self, bootstrap: str) -> str:
        """The ``kafka-topics.sh`` command line that makes this topic."""
        argv = [KAFKA_TOPICS, "--bootstrap-server", bootstrap, "--create", "--topic", self.name,
                "--partitions", str(self.partitions)]
        for key, value in sorted(self.config.items()):
            argv += ["--config", f"{key}={value}"]
        return " ".join(shlex.quote(arg) for arg in argv)


@dataclass(frozen=True, slots=True)
class OperatorTopics:
    """The topics of one operator, and how to create the missing ones.

    ``source`` (JSON events in) and ``sink`` (answers out, keyed by event id) are required; the
    others are optional: without ``feedback`` nothing is learned, without ``state`` each worker
    learns alone and nothing survives a restart.
    """

    source: str
    sink: str
    #: Labels in (and the LLM's answers out); as many partitions as ``source``.
    feedback: str | None = None
    #: Dead letters out.
    dlq: str | None = None
    #: The compacted, single-partition model-state topic.
    state: str | None = None
    #: The learner's single-partition internal topic; ``<app id>-demonstrations`` when None.
    demonstrations: str | None = None
    #: Partitions of ``source`` where a harness creates it (:func:`ensure_topics`), and what the
    #: start-up error suggests for a missing input.
    partitions: int = 1
    #: The largest model-state record (the state topic's ``max.message.bytes``).
    state_max_bytes: int = STATE_MAX_BYTES

    def specs(self, n_input: int) -> list[TopicSpec]:
        """Every topic of the operator as it must be, the input (with ``n_input`` partitions)
        first, then those the operator owns."""
        same = f"as many partitions as the input ({n_input})"
        specs = [
            TopicSpec(self.source, "input", n_input,
                      needs="the events to answer; any partition count (workers share them)"),
            TopicSpec(self.sink, "output", n_input, needs=same),
        ]
        if self.feedback:
            specs.append(TopicSpec(self.feedback, "feedback", n_input,
                                   needs=f"{same}, so that feedback meets its event"))
        if self.dlq:
            specs.append(TopicSpec(self.dlq, "dead letters", 1, dict(DEAD_LETTER_CONFIG),
                                   needs=f"records of up to {dl.MAX_BYTES // 2**20} MiB"))
        if self.state:
            specs.append(TopicSpec(
                self.state, "model state", 1,
                {"cleanup.policy": "compact", "max.message.bytes": str(self.state_max_bytes)},
                needs=f"one partition, compacted, records of up to "
                      f"{self.state_max_bytes // 2**20} MiB"))
        if self.demonstrations:
            specs.append(TopicSpec(self.demonstrations, "demonstrations", 1,
                                   needs="one partition (the fleet's one learner reads it)"))
        return specs


def partition_counts(bootstrap: str, timeout: float = 30.0) -> dict[str, int]:
    """Every topic of the cluster with its partition count."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ConfigurationError(f"no Kafka cluster answered at {bootstrap} within "
                                 f"{timeout:g} s: {exc.args[0]}") from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def topic_max_bytes(bootstrap: str, topic: str, timeout: float = 30.0) -> int | None:
    """The largest record ``topic`` takes (its ``max.message.bytes``); None if unknown."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout)[resource].result(
            timeout=timeout)
        return int(configs["max.message.bytes"].value)
    except Exception:  # no such topic, no rights to read its config, no cluster: not known
        return None


def prepare_topics(bootstrap: str, topics: OperatorTopics, *, create: bool = True,
                   timeout: float = 30.0) -> dict[str, int]:
    """The start-up check of the operator's topics: what ``attach`` and ``streamcascade worker``
    both run before the app subscribes.

    The input must exist. The topics the operator owns are created where missing (``create``),
    with the input's partition count where they must have it; without ``create``, a missing one
    is a problem. A feedback topic whose partition count is not the input's is one too. Every
    problem is in one :class:`ConfigurationError`, each with how to fix it; nothing is created
    when there is one. Returns the partition count of each topic.
    """
    existing = partition_counts(bootstrap, timeout)
    n_input = existing.get(topics.source)
    # A missing input's suggested partition count: the feedback topic's, if that exists.
    specs = topics.specs(n_input or existing.get(topics.feedback or "") or topics.partitions)
    missing = [s for s in specs if s.name not in existing and (s.role == "input" or not create)]
    problems = [f"  {s.name} ({s.role}) does not exist; it needs {s.needs}. Create it:\n"
                f"      {s.create_command(bootstrap)}" for s in missing]
    if topics.feedback and n_input and existing.get(topics.feedback, n_input) != n_input:
        problems.append(
            f"  feedback topic {topics.feedback!r} has {existing[topics.feedback]} partitions and "
            f"input topic {topics.source!r} has {n_input}: they must be equal (co-partitioned), "
            "so that feedback reaches the worker that answered its event")
    if problems:
        raise ConfigurationError(_cannot_start(bootstrap, problems, missing))
    _create_missing(bootstrap, {s.name: (s.partitions, s.config) for s in specs}, existing,
                    timeout)
    return {s.name: existing.get(s.name, s.partitions) for s in specs}


def _cannot_start(bootstrap: str, problems: list[str], missing: list[TopicSpec]) -> str:
    lines = [f"the operator cannot start: its topics on {bootstrap} are not as it needs them",
             *problems]
    if any(s.role != "input" for s in missing):
        lines.append("Or let the operator create the topics it owns: the setting create_topics "
                     "(STREAMCASCADE_CREATE_TOPICS=true, streamcascade worker --create-topics).")
    if any(s.role == "input" for s in missing):
        lines.append("To wait for the input topic instead of stopping: the setting "
                     "wait_for_input (STREAMCASCADE_WAIT_FOR_INPUT=true, streamcascade worker "
                     "--wait-for-input).")
    return "\n".join(lines)


def ensure_topics(bootstrap: str, topics: OperatorTopics,
                  timeout: float = 30.0) -> dict[str, int]:
    """Create every missing topic, the input included (with ``topics.partitions``): for a harness
    (the demo, the benchmark, tests) that owns its input. Refuses a feedback topic that is not
    co-partitioned with the input. Returns the partition count of each topic."""
    existing = partition_counts(bootstrap, timeout)
    if topics.source not in existing:
        _create_missing(bootstrap, {topics.source: (topics.partitions, {})}, existing, timeout)
    return prepare_topics(bootstrap, topics, timeout=timeout)


def ensure_dead_letter_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    """Create ``topic`` for dead letters if it is missing."""
    _create_missing(bootstrap, {topic: (1, DEAD_LETTER_CONFIG)},
                    partition_counts(bootstrap, timeout), timeout)


def ensure_state_topic(bootstrap: str, topics: OperatorTopics, timeout: float = 30.0) -> None:
    """Create the model-state topic, as a worker would, if it is missing."""
    spec = next((s for s in topics.specs(1) if s.name == topics.state), None)
    if spec is not None:
        _create_missing(bootstrap, {spec.name: (spec.partitions, spec.config)},
                        partition_counts(bootstrap, timeout), timeout)


def _create_missing(bootstrap: str, wanted: dict[str, tuple[int, dict[str, str]]],
                    existing: dict[str, int], timeout: float) -> None:
    """Create the ``wanted`` topics not in ``existing``, and wait until the cluster lists them
    (a consumer that subscribes to a topic its broker does not list yet is not assigned it)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    missing = [
        NewTopic(name, num_partitions=n, replication_factor=-1, config=config)
        for name, (n, config) in wanted.items()
        if name not in existing
    ]
    if not missing:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:  # a race with another worker creating it is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ConfigurationError(f"could not create topic {name!r}: {exc}") from None
    deadline = time.monotonic() + timeout
    while not {t.topic for t in missing} <= set(partition_counts(bootstrap, timeout)):
        if time.monotonic() > deadline:
            raise ConfigurationError(f"topics {sorted(t.topic for t in missing)} were created "
                                     f"but {bootstrap} does not list them")
        time.sleep(0.1)
