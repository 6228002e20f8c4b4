"""A local, single-node Apache Kafka broker for the demo and the tests.

``jars`` fetches the pinned broker jars once, ``java`` finds a Java runtime, ``config`` writes the
broker's settings, ``cds`` keeps class-data archives that make later starts quick, ``process``
records a started broker and stops it, ``network`` checks ports and clusters, and ``broker``
holds :class:`LocalKafka`, which uses them all.
"""

from __future__ import annotations

from streamcascade.kafka.broker import LocalKafka
from streamcascade.kafka.jars import broker_pom, jars_dir, kafka_version, resolve_jars
from streamcascade.kafka.java import java_executable
from streamcascade.kafka.network import check_cluster, find_free_port
from streamcascade.kafka.process import BrokerState, read_state, running_broker, stop_broker

__all__ = [
    "BrokerState",
    "LocalKafka",
    "broker_pom",
    "check_cluster",
    "find_free_port",
    "jars_dir",
    "java_executable",
    "kafka_version",
    "read_state",
    "resolve_jars",
    "running_broker",
    "stop_broker",
]
