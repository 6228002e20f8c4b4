"""The README's Python examples, run as they are written, against the session's broker.

Each ```python block of README.md is something a user runs. A block that attaches the operator
to a Faust app is saved as a module and run as ``faust -A <module> worker -l info``, the way the
README says, in the order a new user goes: the app first, on a broker without its topics, then
events from a separate client. Only its app id and topic names are changed (suffixed, so that a
shared cluster's topics are never touched). Its LLM is a local OpenAI-compatible answerer on
loopback; its broker and LLM come from the environment variables the README names. Any other
block runs as a script.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from operator_harness import rows

import streamcascade
from streamcascade.benchkit.fault_server import HEALTHY, FaultServer
from streamcascade.benchkit.stream_io import TopicReader, make_producer, start_worker, stop_worker
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.topics import partition_counts

README = Path(__file__).resolve().parents[2] / "README.md"
FAUST = Path(sys.executable).with_name("faust")
#: What the first example may import: the public API, and nothing under it.
FIRST_EXAMPLE_IMPORTS = {"TASKS", "CascadeConfig", "attach", "build_cascade", "make_llm"}


def python_blocks() -> list[str]:
    """The README's ```python blocks, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class AppExample:
    """A README block that attaches the operator to a Faust app: its code, app id and topics."""

    code: str
    app_id: str
    topics: dict[str, str]  # attach's keyword -> topic name

    @classmethod
    def parse(cls, code: str) -> AppExample | None:
        app_id, topics = None, {}
        for node in ast.walk(ast.parse(code)):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name == "faust.App":
                app_id = ast.literal_eval(node.args[0])
            elif name == "attach":
                topics = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                          if k.arg in ("source", "sink", "feedback", "dlq", "state_topic")}
        return cls(code, app_id, topics) if app_id and topics else None

    def all_topics(self) -> list[str]:
        return [*self.topics.values(), f"{self.app_id}-demonstrations",
                f"{self.app_id}-__assignor-__leader"]

    def renamed(self, suffix: str) -> AppExample:
        """The same example with ``suffix`` added to its app id and topic names, and nothing
        else changed: the test's cluster may be a shared one (``STREAMCASCADE_BOOTSTRAP``),
        where the README's names may be taken."""
        code = self.code
        for name in (self.app_id, *self.topics.values()):
            assert code.count(f'"{name}"') == 1, f"{name!r} is not one literal of the example"
            code = code.replace(f'"{name}"', f'"{name}-{suffix}"')
        return AppExample(code, f"{self.app_id}-{suffix}",
                          {k: f"{v}-{suffix}" for k, v in self.topics.items()})


@pytest.fixture
def example(kafka_bootstrap: str, tmp_path: Path) -> Iterator[AppExample]:
    """The README's first block, saved as ``myapp.py`` (with names of its own); its topics are
    deleted after the test."""
    found = AppExample.parse(python_blocks()[0])
    assert found is not None, "the README's first example attaches the operator to an app"
    renamed = found.renamed(uuid.uuid4().hex[:8])
    (tmp_path / "myapp.py").write_text(renamed.code, encoding="utf-8")
    yield renamed
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics(renamed.all_topics(), operation_timeout=10).values():
        with contextlib.suppress(Exception):  # (not all exist)
            future.result(timeout=15)


def start_app(bootstrap: str, tmp_path: Path, llm_url: str, **env: str
              ) -> subprocess.Popen[bytes]:
    """``faust -A myapp worker -l info`` in ``tmp_path``, as the README says to run it."""
    return start_worker(
        [str(FAUST), "--workdir", str(tmp_path), "-A", "myapp", "worker", "-l", "info"],
        {"STREAMCASCADE_BOOTSTRAP": bootstrap, "LLM_URL": llm_url,
         "STREAMCASCADE_STATE_SIGNING_KEY": secrets.token_hex(32), **env},
        tmp_path / "app.log")


def wait_for_log(path: Path, text: str, process: subprocess.Popen[bytes],
                 timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert process.poll() is None, path.read_text(errors="replace")[-5000:]
        assert time.monotonic() < deadline, path.read_text(errors="replace")[-5000:]
        time.sleep(0.2)


def test_the_first_example_uses_only_the_public_api() -> None:
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(blocks[0])):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamcascade"):
            assert node.module == "streamcascade", f"imports from {node.module}"
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("streamcascade") for a in node.names)
    assert imported == FIRST_EXAMPLE_IMPORTS
    assert imported <= set(streamcascade.__all__)


def test_every_other_python_block_runs(tmp_path: Path) -> None:
    """Blocks that are not app examples run as scripts (those that are, the tests below run)."""
    for i, code in enumerate(python_blocks()):
        if AppExample.parse(code) is not None:
            continue
        script = tmp_path / f"block{i}.py"
        script.write_text(code, encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120)
        assert done.returncode == 0, f"README block {i}:\n{code}\n{done.stderr.decode()}"


def test_the_app_example_answers_events_produced_after_it_started(
    kafka_bootstrap: str, tmp_path: Path, example: AppExample
) -> None:
    """The app starts on a broker without any of its topics; then the input topic is made and
    events are produced by another client: every event is answered within 30 s of the first."""
    stream = rows(20)
    codec = RecordCodec()
    source = example.topics["source"]
    reader = TopicReader(kafka_bootstrap, [example.topics["sink"]])
    with FaultServer(HEALTHY) as llm:
        app = start_app(kafka_bootstrap, tmp_path, llm.url, STREAMCASCADE_WAIT_FOR_INPUT="true",
                        STREAMCASCADE_SUMMARY_INTERVAL_S="2")
        log = tmp_path / "app.log"
        try:
            # The app is up, and says why it does nothing yet.
            wait_for_log(log, f"waiting for input topic '{source}'", app, timeout=60)
            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
            admin.create_topics([NewTopic(source, 2, replication_factor=1)])[source].result(30)
            producer = make_producer(kafka_bootstrap)
            first_event = time.monotonic()
            for row in stream:
                producer.produce(source, key=codec.key(row.id),
                                 value=codec.encode_event_fields(row.id, row.text))
            assert producer.flush(30) == 0
            answered: set[str] = set()
            while len(answered) < len(stream) and time.monotonic() - first_event < 30:
                answered |= {json.loads(r.value or b"{}")["id"] for r in reader.poll(timeout=0.2)}
                assert app.poll() is None, log.read_text(errors="replace")[-5000:]
            missing = {r.id for r in stream} - set(answered)
            assert not missing, (f"{len(missing)} events unanswered 30 s after the first\n"
                                 + log.read_text(errors="replace")[-5000:])
            wait_for_log(log, "events answered", app, timeout=10)  # the periodic summary
        finally:
            reader.close()
            stop_worker(app)
    text = log.read_text(errors="replace")
    assert re.search(rf"answering {re.escape(source)} partitions? \[0, 1\]", text), text[-3000:]
    # The topics it made: feedback (and output) with the input's partition count.
    counts = partition_counts(kafka_bootstrap)
    assert [counts.get(example.topics[k]) for k in ("sink", "feedback", "state_topic")] \
        == [2, 2, 1]


def test_the_app_example_without_topic_creation_stops_and_says_what_is_missing(
    kafka_bootstrap: str, tmp_path: Path, example: AppExample
) -> None:
    with FaultServer(HEALTHY) as llm:
        app = start_app(kafka_bootstrap, tmp_path, llm.url, STREAMCASCADE_CREATE_TOPICS="false")
        with contextlib.suppress(subprocess.TimeoutExpired):
            app.wait(60)
        code = stop_worker(app)
    text = (tmp_path / "app.log").read_text(errors="replace")
    assert code not in (0, -15), text[-5000:]  # it stopped by itself, failing
    error = text[text.index("cannot start"):]
    for topic in example.all_topics()[:-1]:  # (Faust's own leader topic is Faust's)
        assert f"kafka-topics.sh --bootstrap-server {kafka_bootstrap} --create --topic {topic} " \
            in error, error
    assert "cleanup.policy=compact" in error
