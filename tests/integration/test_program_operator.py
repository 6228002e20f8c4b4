"""A two-module program served by the real operator on the broker: feedback teaches its
policies, ``kill -9`` loses no event, and a restarted worker goes on from the published state."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from operator_harness import DATA, OperatorRun, rows

from streamcascade.benchkit.stream_io import start_worker
from streamcascade.kafka import find_free_port

WORKER = Path(__file__).resolve().parent / "program_worker.py"


class ProgramRun(OperatorRun):
    """An operator run whose workers serve the ``hate_gate`` program through ``attach``."""

    def start_worker(self, *extra: str) -> object:  # type: ignore[override]
        port = find_free_port()
        argv = [sys.executable, str(WORKER), "--bootstrap", self.bootstrap,
                "--app-id", self.app_id, "--program", "hate_gate", "--task", "hatespeech",
                "--dataset", str(DATA), "--metrics-port", str(port), "--budget", "500",
                "--warmup", "50", *extra]
        for flag, topic in self.topics.items():
            argv += [f"--{flag}", topic]
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        proc = start_worker(argv, {"STREAMCASCADE_STATE_SIGNING_KEY": self.key}, log)
        self.workers.append(proc)
        self.metrics_ports.append(port)
        return proc


def test_a_two_module_program_learns_survives_kill_9_and_resumes(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    n = 1200
    stream = rows(n)
    ids = {r.id for r in stream}
    truth = {r.id: r.label or "" for r in stream}
    run = ProgramRun(kafka_bootstrap, new_topic, tmp_path)
    labelled: set[str] = set()

    def label_answered() -> None:
        # A labelling team: the ground truth of every answered event, as it is answered.
        new = [i for i in run.outputs if i not in labelled]
        labelled.update(new)
        run.send_feedback([(i, truth[i]) for i in new])

    try:
        first = run.start_worker()
        run.wait_ready()
        run.produce(run.event_records(stream[:800]), rate=300)
        # Mid-stream, once answers are out and a state that learned from feedback is
        # published: kill it hard.
        deadline = time.monotonic() + 90
        while (len(run.outputs) < 500 or max(run.state_versions() or [0]) < 5) \
                and time.monotonic() < deadline:
            run.poll()
            label_answered()
        assert len(run.outputs) >= 500, run.logs()
        run.kill_hard(first)  # type: ignore[arg-type]
        killed_at_ms = time.time() * 1000
        before = run.state_versions()
        assert before and max(before) >= 5, (before, run.logs())
        answered_before = set(run.outputs)
        run.produce(run.event_records(stream[800:]))
        run.start_worker()
        assert run.wait_answered(ids, timeout=150, during=label_answered), run.logs()
        label_answered()
        deadline = time.monotonic() + 30
        while max(after := run.state_versions()) <= max(before):
            assert time.monotonic() < deadline, (before, after, run.logs())
            run.poll()
            label_answered()
    finally:
        run.stop_all()
    assert len(answered_before) < n  # the kill was mid-stream
    # Every event has an output, or a dead letter for an LLM answer that names no label.
    assert ids <= run.answered()
    assert {d["reason"] for d in run.dead} <= {"llm_failed"}
    assert len(run.outputs) > 0.95 * n
    # The outputs name where each answer came from and what it cost: the stages or an LLM, at
    # the program's prices (the gate's stages are the program's features, paid on every event).
    outputs = [run.last_output(i) for i in ids if i in run.outputs]
    stages = {o["stage"] for o in outputs}
    assert stages <= {"program", "hashed", "llama-2-70b-chat", "gpt-3.5-turbo-1106"}
    assert all(o["cost"] > 0 for o in outputs)
    assert any(o["cost"] >= 636 for o in outputs) and any(o["cost"] < 1 for o in outputs)
    # The learner resumed from the last published state: versions only go up, past the old.
    assert after[: len(before)] == before
    assert after == sorted(after) and after[-1] > max(before)
    restarted = [r for recs in run.outputs.values() for r in recs if r.timestamp_ms > killed_at_ms]
    assert restarted
    versions = [json.loads(r.value or b"{}")["model_version"] for r in restarted]
    assert min(versions) >= max(before)
