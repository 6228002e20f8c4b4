"""How a local broker is configured: its JVM's command line, ``server.properties``, logging.

The broker runs as a combined KRaft broker and controller (one node) on 127.0.0.1, sized for a
demo, the tests or a benchmark on a small machine rather than for a long-lived server.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Heap of the broker's JVM. Kafka's own default (1 GiB, pre-touched) is sized for servers; a
#: test broker holds a few small topics, and 512 MiB leaves room on a small machine.
DEFAULT_HEAP = "512m"
#: JVM flags besides the heap: G1 with short pauses, as Kafka's scripts use; die on OOM rather
#: than limp on. The quick C1 compiler only (``TieredStopAtLevel=1``): after a start, the
#: optimising C2 compiler keeps a good part of a core busy for minutes, which the workers and
#: clients beside the broker on a small machine need, and their latency suffers meanwhile; C1
#: code serves a local broker's load at a lower CPU cost in all.
JVM_FLAGS = (
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
SERVER_PROPERTIES = "server.properties"
LOG4J2_PROPERTIES = "log4j2.properties"

_LOG4J2 = """\
# Written by streamcascade's launcher: INFO to the console, which goes to broker.log.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def jvm_command(java: str, heap: str, jars: Path, data_dir: Path) -> list[str]:
    """The JVM's command line up to the main class: heap, flags, logging, classpath."""
    return [java, f"-Xmx{heap}", *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={data_dir / LOG4J2_PROPERTIES}",
            "-cp", f"{jars}{os.sep}*"]  # fmt: skip


def write_config(
    data_dir: Path, port: int, controller_port: int, overrides: dict[str, str] | None = None
) -> Path:
    """Write the broker's ``server.properties`` and logging setup into ``data_dir``.

    ``overrides`` replace the launcher's properties. Returns the path of ``server.properties``.
    """
    (data_dir / LOG4J2_PROPERTIES).write_text(_LOG4J2)
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "log.dirs": str(data_dir / "data"),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests start and stop consumer groups all the time: rebalance at once.
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        # The log cleaner (compacted topics) keeps its key map on the heap, 128 MiB by default:
        # far more than a local broker's live data, and enough to keep its heap above G1's
        # marking threshold, so that G1 would mark every few seconds. 16 MiB still maps about
        # 600,000 keys per cleaning pass (24 bytes a key, 90% full).
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        **(overrides or {}),
    }
    config = data_dir / SERVER_PROPERTIES
    config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    return config
