"""A live LLM endpoint that hangs every fourth request and fails another fourth, behind a worker
on the real broker: the stream keeps flowing, every event gets one output or one dead letter, and
the consumer group catches up with the input once it stops."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from operator_harness import FAST, LLM, OperatorRun, json_id, rows

from streamcascade.benchkit.fault_server import FaultServerProcess
from streamcascade.benchkit.stream_io import start_worker, worker_command
from streamcascade.kafka import find_free_port
from streamcascade.models.tasks import TASKS

#: Request by request: an answer, nothing at all, an answer, a server error.
SCRIPT = ("ok", "hang", "ok", "500")


@dataclass
class LiveLLMRun(OperatorRun):
    """An operator deployment whose workers ask a live LLM endpoint."""

    llm_url: str = ""

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        port = find_free_port()
        argv = worker_command(self.bootstrap, self.app_id, self.topics, [
            "--task", "hatespeech", "--llm-url", self.llm_url, "--llm-model", "fault",
            "--metrics-port", str(port), *FAST, *self.worker_args, *extra])
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        proc = start_worker(argv, {"STREAMCASCADE_STATE_SIGNING_KEY": self.key}, log)
        self.workers.append(proc)
        self.metrics_ports.append(port)
        return proc


def _lag(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Records of ``topic`` the group has not committed yet, over its partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)])
    committed = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group}-lag-probe"})
    try:
        lag = 0
        for tp in committed.topic_partitions:
            _, high = watcher.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                    timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        watcher.close()


def test_a_hanging_and_failing_llm_does_not_stall_the_stream(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    task = TASKS["hatespeech"]
    stream = rows(300)
    answers = {}
    for row in stream:
        index = task.parse_answer(row.llm.get(LLM, ""))
        if index is not None:
            answers[row.text] = task.answer_words[index]
    with FaultServerProcess(SCRIPT, answers=answers) as endpoint:
        run = LiveLLMRun(kafka_bootstrap, new_topic, tmp_path, partitions=2, worker_args=(
            "--llm-timeout", "1", "--llm-deadline", "3", "--llm-concurrency", "16",
            "--on-llm-failure", "degrade"), llm_url=endpoint.url)
        ids = {r.id for r in stream}
        try:
            run.start_worker()
            run.wait_ready()
            started = time.monotonic()
            run.produce(run.event_records(stream), rate=100)
            # Three seconds of input; a stalled stream (a hung request holding its event, events
            # waiting on each other) would take many minutes.
            assert run.wait_answered(ids, timeout=90), run.logs()
            took = time.monotonic() - started
            lag = -1
            for _ in range(60):  # the group commits every second
                lag = _lag(kafka_bootstrap, run.app_id, run.topics["input"], run.partitions)
                if lag == 0:
                    break
                time.sleep(0.5)
            assert lag == 0, run.logs()
            hung = run.metric(0, "streamcascade_llm_timeouts_total")
            hedged = run.metric(0, "streamcascade_llm_hedges_total")
            degraded = run.metric(0, "streamcascade_degraded_total")
            breaker_states = run.metric(0, "streamcascade_llm_breaker_state")  # one is 1
            for _ in range(10):  # late duplicates, if any, would arrive now
                run.poll()
        finally:
            run.stop_all()
    # Exactly one output or one dead letter per event, never both, never two.
    dead = [json_id(d) for d in run.dead]
    assert all(len(run.outputs.get(i, [])) + dead.count(i) == 1 for i in ids), (
        [i for i in ids if len(run.outputs.get(i, [])) + dead.count(i) != 1])
    assert set(run.outputs) | set(dead) == ids
    # With degrade every event is answered; those the LLM could not answer say so.
    assert not dead
    flagged = [i for i in ids if run.last_output(i).get("degraded")]
    assert flagged and all(run.last_output(i)["stage"] == "hashed" for i in flagged)
    assert degraded == len(flagged)
    assert hung + hedged > 0 and breaker_states == 1.0
    assert took < 60, took
