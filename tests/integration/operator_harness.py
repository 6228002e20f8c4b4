"""A harness for the operator's integration tests: topics, worker subprocesses, readers.

Workers are real ``streamcascade worker`` processes (so that ``kill -9`` is real), on the session's
broker, answering the bundled HateSpeech stream with the recorded GPT-3.5 answers.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcascade.benchkit.stream_io import (
    Received,
    TopicReader,
    make_producer,
    start_worker,
    stop_worker,
    worker_command,
)
from streamcascade.kafka import find_free_port
from streamcascade.models.datasets import StreamRow, read_stream
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.options import STATE_MAX_BYTES
from streamcascade.operators.state_store import StateSigner

DATA = Path(__file__).resolve().parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"
LLM = "gpt-3.5-turbo-1106"
# Small batches and quick state publishing: the tests' streams are short.
FAST = ("--batch-time", "0.02", "--learn-batch-time", "0.2", "--publish-interval", "0.5",
        "--loglevel", "info")


def rows(n: int) -> list[StreamRow]:
    return read_stream(DATA, n)


@dataclass
class OperatorRun:
    """One operator deployment: its topics, its workers and what came out."""

    bootstrap: str
    new_topic: Callable[..., str]
    tmp_path: Path
    partitions: int = 2
    worker_args: Sequence[str] = ()
    app_id: str = field(default_factory=lambda: f"it-{uuid.uuid4().hex[:8]}")
    key: str = field(default_factory=lambda: secrets.token_hex(32))
    codec: RecordCodec = field(default_factory=RecordCodec)

    def __post_init__(self) -> None:
        p = self.partitions
        self.topics = {
            "input": self.new_topic(p, prefix="events"),
            "output": self.new_topic(p, prefix="predictions"),
            "feedback": self.new_topic(p, prefix="feedback"),
            "dlq": self.new_topic(1, prefix="dead-letters"),
            "state-topic": self.new_topic(1, prefix="model-state", **{
                "cleanup.policy": "compact", "max.message.bytes": str(STATE_MAX_BYTES)}),
        }
        self.producer = make_producer(self.bootstrap)
        self.reader = TopicReader(self.bootstrap, [self.topics["output"], self.topics["dlq"]])
        self.outputs: dict[str, list[Received]] = {}
        self.dead: list[dict[str, Any]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.metrics_ports: list[int] = []

    # -- workers --------------------------------------------------------------------------
    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        port = find_free_port()
        argv = worker_command(self.bootstrap, self.app_id, self.topics, [
            "--task", "hatespeech", "--llm", LLM, "--llm-records", str(DATA),
            "--metrics-port", str(port), *FAST, *self.worker_args, *extra])
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        proc = start_worker(argv, {"STREAMCASCADE_STATE_SIGNING_KEY": self.key}, log)
        self.workers.append(proc)
        self.metrics_ports.append(port)
        return proc

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker serves metrics: it has loaded the model state and runs."""
        deadline = time.monotonic() + timeout
        while min(self.metric(w, "streamcascade_model_version")
                  for w in range(len(self.workers))) < 0:
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.3)

    def kill_hard(self, proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.workers:
            stop_worker(proc, timeout=20)
        self.reader.close()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.tmp_path.glob("worker-*.log")))

    def logs_whole(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.tmp_path.glob("worker-*.log")))

    def metric(self, worker: int, name: str, labels: str = "") -> float:
        """A metric's value from worker ``worker``'s endpoint, summed over the series whose
        labels contain ``labels`` (``'source="llm"'``); -1 if the endpoint is down."""
        url = f"http://127.0.0.1:{self.metrics_ports[worker]}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return -1.0
        pattern = re.compile(rf"^{re.escape(name)}((?:{{[^}}]*}})?) (\S+)$", re.M)
        return sum(float(v) for lab, v in pattern.findall(text) if labels in lab)

    # -- streams --------------------------------------------------------------------------
    def produce(self, records: Sequence[tuple[bytes, bytes]], rate: float | None = None) -> None:
        start = time.monotonic()
        for i, (key, value) in enumerate(records):
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    self.producer.poll(delay)
            self.producer.produce(self.topics["input"], key=key, value=value)
            self.producer.poll(0)
        assert self.producer.flush(30) == 0

    def event_records(self, stream: Sequence[StreamRow]) -> list[tuple[bytes, bytes]]:
        return [(self.codec.key(r.id), self.codec.encode_event_fields(r.id, r.text))
                for r in stream]

    def send_feedback(self, items: Sequence[tuple[str, str]], source: str = "ground_truth") -> None:
        for event_id, label in items:
            self.producer.produce(self.topics["feedback"], key=self.codec.key(event_id),
                                  value=self.codec.encode_feedback(event_id, label, source))
        assert self.producer.flush(30) == 0

    def poll(self) -> list[Received]:
        got = self.reader.poll(timeout=0.2)
        for record in got:
            if record.topic == self.topics["output"]:
                value = json.loads(record.value or b"{}")
                self.outputs.setdefault(value["id"], []).append(record)
            else:
                self.dead.append(json.loads(record.value or b"{}"))
        return got

    def answered(self) -> set[str]:
        """Ids with an output or a dead letter."""
        return set(self.outputs) | {json_id(d) for d in self.dead}

    def wait_answered(self, ids: set[str], timeout: float, during: Callable[[], None] | None = None
                      ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if during is not None:
                during()
            if ids <= self.answered():
                return True
            for proc in self.workers[-1:]:
                assert proc.poll() is None or proc.returncode in (-9, 0), self.logs()
        return False

    def last_output(self, event_id: str) -> dict[str, Any]:
        return json.loads(self.outputs[event_id][-1].value or b"{}")

    def state_versions(self) -> list[int]:
        """Versions of the signed states on the state topic, in publish order."""
        reader = TopicReader(self.bootstrap, [self.topics["state-topic"]])
        signer = StateSigner(self.key)
        versions: list[int] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for record in reader.poll(timeout=0.5):
                versions.append(signer.verify(record.value).version)
        reader.close()
        return versions


def json_id(letter: dict[str, Any]) -> str:
    """The event id inside a dead letter's original bytes, if they are JSON with an id."""
    import base64

    try:
        return str(json.loads(base64.b64decode(letter["original"]))["id"])
    except (ValueError, KeyError, TypeError):
        return ""
