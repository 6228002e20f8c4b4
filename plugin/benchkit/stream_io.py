"""Kafka clients around a running operator: the demo, the benchmark and the tests use them.

Producers here partition by key with ``murmur2_random``, the Java client's partitioner, which is
also what Faust's producer uses, so that an event, its output and its feedback keyed by the same
id land on the same partition number of equally partitioned topics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Received:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: Milliseconds since the epoch: the record's create time (set by its producer).
    timestamp_ms: int


def make_producer(bootstrap: str, **config: Any) -> Any:
    from confluent_kafka import Producer

    settings = {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                "linger.ms": 5, "queue.buffering.max.messages": 1_000_000}
    settings.update(config)
    return Producer(settings)


class TopicReader:
    """Reads topics from their start, outside any consumer group (a fresh group id each time)."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"streamcascade-reader-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        })
        self._consumer.subscribe(list(topics))

    def poll(self, timeout: float = 0.1, max_records: int = 5000) -> list[Received]:
        out = []
        for message in self._consumer.consume(num_messages=max_records, timeout=timeout):
            if message.error():
                continue
            _, ts = message.timestamp()
            out.append(Received(str(message.topic()), int(message.partition() or 0),
                                int(message.offset() or 0), message.key(), message.value(), ts))
        return out

    def close(self) -> None:
        self._consumer.close()


def produce_all(producer: Any, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce ``(key, value)`` records as fast as the producer takes them; returns the count."""
    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    producer.flush(30)
    return n


def worker_command(
    bootstrap: str,
    app_id: str,
    topics: dict[str, str],
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv of a ``streamcascade worker`` subprocess; ``topics`` maps flag name to topic."""
    argv = [sys.executable, "-m", "streamcascade", "worker", "--bootstrap", bootstrap,
            "--app-id", app_id]
    for flag, topic in topics.items():
        argv += [f"--{flag}", topic]
    return [*argv, *extra]


def start_worker(
    argv: Sequence[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a worker subprocess in its own process group, its output going to ``log_path``."""
    handle = log_path.open("ab")
    try:
        return subprocess.Popen(
            # Faust keeps a data folder per app; beside the log, not in the caller's directory.
            list(argv),
            env={"APP_DATADIR": str(log_path.parent / "{conf.name}-data"), **os.environ, **env},
            stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        handle.close()


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


@dataclass(frozen=True, slots=True)
class ProcessTimes:
    """Where a process's threads spent their time so far (Linux ``/proc``), in seconds."""

    #: On a core (user and system), all threads together.
    cpu_s: float
    #: Ready to run but waiting for a core (the scheduler's run queue), all threads together.
    runqueue_s: float


def process_times(pid: int) -> ProcessTimes | None:
    """The CPU and run-queue times of process ``pid``'s threads; None where ``/proc`` lacks them.

    The difference of two readings says what a phase cost the process, and how much of it the
    process spent waiting for a core that other processes held (a busy machine, not its code).
    """
    cpu_ns = wait_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as stat:
                on_cpu, waiting, _slices = stat.read().split()
            cpu_ns += int(on_cpu)
            wait_ns += int(waiting)
    except (OSError, ValueError):
        return None
    return ProcessTimes(cpu_ns / 1e9, wait_ns / 1e9)


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    """Call ``predicate()`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
