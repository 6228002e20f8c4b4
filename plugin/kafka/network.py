"""Ports on 127.0.0.1, and whether a Kafka cluster answers."""

from __future__ import annotations

import logging
import socket

from streamcascade.errors import KafkaLauncherError


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int) -> None:
    """Raise unless the broker could listen on ``port`` of 127.0.0.1 now.

    The probe binds as the broker's JVM will, with ``SO_REUSEADDR``: connections of a broker that
    just stopped linger in TIME-WAIT on the port for a minute, and they stop a plain bind but not
    a new listener. Only a socket that holds the port (a listener, say) fails the check.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise KafkaLauncherError(f"port {port} on 127.0.0.1 is already in use") from exc


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``port`` of 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_cluster(bootstrap: str, timeout: float = 10.0) -> int:
    """Ask the cluster at ``bootstrap`` for its metadata; return how many brokers it has.

    Raises
    ------
    KafkaLauncherError
        No broker answered within ``timeout`` seconds.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger(f"{__name__}.librdkafka")  # librdkafka's own lines, kept apart
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet})  # type: ignore[dict-item]
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaLauncherError(f"no Kafka broker answered at {bootstrap}: {exc}") from exc
    if not metadata.brokers:
        raise KafkaLauncherError(f"the cluster at {bootstrap} reports no brokers")
    return len(metadata.brokers)
