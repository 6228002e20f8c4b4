"""Creating and checking the operator's topics before a worker starts (Kafka admin API).

The feedback topic must be co-partitioned with the input topic (same partition count, keyed by
event id) so that feedback reaches the worker that answered its event; a mismatch is refused here
rather than discovered as a stream of ``feedback_unmatched`` dead letters.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcascade.errors import ConfigurationError
from streamcascade.operators import dead_letters as dl


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """The topics of one operator and how to create the missing ones."""

    input: str
    output: str
    feedback: str | None = None
    dlq: str | None = None
    state: str | None = None
    #: Partitions of the input topic when it must be created.
    partitions: int = 1
    state_max_bytes: int = 64 * 1024 * 1024


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


def ensure_topics(bootstrap: str, plan: TopicPlan, timeout: float = 30.0) -> dict[str, int]:
    """Create the plan's missing topics; refuse a feedback topic not co-partitioned with input.

    Returns the partition count of each topic of the plan.
    """
    existing = partition_counts(bootstrap, timeout)
    n_input = existing.get(plan.input, plan.partitions)
    wanted: dict[str, tuple[int, dict[str, str]]] = {
        plan.input: (n_input, {}),
        plan.output: (n_input, {}),
    }
    if plan.feedback:
        wanted[plan.feedback] = (n_input, {})
    if plan.dlq:
        wanted[plan.dlq] = (1, {"max.message.bytes": str(dl.MAX_BYTES)})
    if plan.state:
        wanted[plan.state] = (
            1, {"cleanup.policy": "compact", "max.message.bytes": str(plan.state_max_bytes)}
        )
    if plan.feedback and plan.feedback in existing and existing[plan.feedback] != n_input:
        raise ConfigurationError(
            f"feedback topic {plan.feedback!r} has {existing[plan.feedback]} partitions and input "
            f"topic {plan.input!r} has {n_input}: they must be equal (co-partitioned), so that "
            "feedback reaches the worker that answered its event"
        )
    _create_missing(bootstrap, wanted, existing, timeout)
    return {name: existing.get(name, n) for name, (n, _) in wanted.items()}


def ensure_dead_letter_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    """Create ``topic`` for dead letters if it is missing (``attach`` users name it and may not
    have made it; a dead letter the broker refused would stop the stream)."""
    existing = partition_counts(bootstrap, timeout)
    wanted = {topic: (1, {"max.message.bytes": str(dl.MAX_BYTES)})}
    _create_missing(bootstrap, wanted, existing, timeout)


def _create_missing(bootstrap: str, wanted: dict[str, tuple[int, dict[str, str]]],
                    existing: dict[str, int], timeout: float) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    missing = [
        NewTopic(name, num_partitions=n, replication_factor=-1, config=config)
        for name, (n, config) in wanted.items()
        if name not in existing
    ]
    if missing:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
            except Exception as exc:  # a race with another worker creating it is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise ConfigurationError(f"could not create topic {name!r}: {exc}") from None
