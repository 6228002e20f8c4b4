"""``streamcascade bench kafka``: the cascade operator against a pass-through agent, one broker.

Two measurements, each on fresh topics of the same broker, in one run:

1. **Throughput.** The same ``--events`` HateSpeech events are produced into an input topic
   ahead of time; a ``streamcascade worker --pass-through`` (decode, write an output per event
   keyed by id, ack after the broker has it) and then a cascade worker read them, ``--repeats``
   times in turn, each on fresh topics. Events/s is the count of outputs over the span between
   the first and the last output's broker timestamp, so worker start-up is not counted.
   ``throughput_ratio`` is the median over the pairs of the operator's events/s over the
   pass-through's (each pair in ``throughput_pairs``).
2. **Latency.** The warm cascade worker on a stream produced at ``--rate`` events/s (its first
   ``--settle`` seconds are not counted: a long-running worker is past its first learning batch and
   first state publication, which a freshly started one does in its first half second); an answer's
   latency is its output record's timestamp minus its input record's (both create times on this
   machine's clock: the bench stamps an event when it calls ``produce()``, with a 1 ms linger;
   the worker's producer stamps an answer when it is handed over, before the broker acknowledges
   it). So it covers the producer, the broker, the fetch, the micro-batch wait and the cascade.
   ``p99_stage1_ms`` is over the answers of the first stage; the pass-through agent runs at the
   same rate first, and its ``p50_passthrough_ms``/``p99_passthrough_ms`` are what the plumbing
   alone costs on the same machine. Each run also reports ``<mode>_latency_breakdown_ms``
   (``in_worker``: from Faust handing the record to the agent to the answer, i.e. the batch wait
   and the answering; ``to_worker``: everything before), ``<mode>_cpu_ms_per_event`` (the
   worker's threads together) and ``<mode>_cpu_wait_share`` (of the time the worker's threads
   were ready to run, the share they waited for a core: the machine being busy with other work,
   not the worker's code), ``<mode>_event_loop_lag`` (from the worker's metrics endpoint: the
   share of its 50 ms loop probes that found the loop stalled past 10, 25 and 50 ms), and the
   load average when it started.

The cascade is warmed first, as a long-running operator would be: it learns the ground truth of
the stream's first ``--warm`` events in this process, and that state is published (signed) to the
state topic the workers load at start, so most measured events are answered by the first stage
(the operating point is ``--target-llm-share``). The LLM is the recorded GPT-3.5. The operator
learns from the LLM's answers while it runs and publishes its state every ``--publish-interval``
seconds (the worker's default unless given).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from streamcascade.errors import StreamcascadeError
from streamcascade.operators.options import DEFAULTS

LLM = "gpt-3.5-turbo-1106"


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _warm_state(rows: list[Any], key: str, target_share: float) -> tuple[bytes, int]:
    """A cascade that learned ``rows``' ground truth, as a signed state; and its version."""
    from streamcascade.demo import DATA
    from streamcascade.models.cascade import CascadeConfig, build_cascade
    from streamcascade.models.llm.recorded import RecordedLLM
    from streamcascade.models.tasks import TASKS
    from streamcascade.models.types import SOURCE_GROUND_TRUTH, Demonstration, Event
    from streamcascade.operators.state_store import StateSigner

    task = TASKS["hatespeech"]
    cascade = build_cascade(task, RecordedLLM(DATA, LLM, task),
                            CascadeConfig(stages=["hashed"], target_llm_share=target_share))
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        cascade.learn([Demonstration(Event(r.id, r.text), task.labels.index(r.label),
                                     SOURCE_GROUND_TRUTH) for r in chunk])
    meta = {"task": task.name, "stages": ["hashed"]}
    return StateSigner(key).sign(cascade.version, cascade.state_bytes(), meta), cascade.version


class _Deployment:
    """Fresh topics, the warm state published, one worker subprocess."""

    def __init__(self, bootstrap: str, name: str, key: str, out_dir: Path,
                 pass_through: bool, state: bytes | None, batch_time: float,
                 operator_flags: Sequence[str] = ()) -> None:
        from streamcascade.benchkit.stream_io import make_producer
        from streamcascade.kafka import find_free_port
        from streamcascade.operators.state_store import STATE_KEY
        from streamcascade.operators.topics import OperatorTopics, ensure_topics

        run = f"bench-{name}-{secrets.token_hex(4)}"
        self.bootstrap = bootstrap
        self.topics = {"input": f"{run}-events", "output": f"{run}-predictions",
                       "feedback": f"{run}-feedback", "dlq": f"{run}-dead-letters",
                       "state-topic": f"{run}-model-state"}
        t = self.topics
        ensure_topics(bootstrap, OperatorTopics(t["input"], t["output"], t["feedback"], t["dlq"],
                                                t["state-topic"]))
        if state is not None:
            producer = make_producer(bootstrap)
            producer.produce(self.topics["state-topic"], key=STATE_KEY, value=state)
            producer.flush(30)
        self.app_id = run
        self.key = key
        self.log = out_dir / f"{run}.log"
        self.pass_through = pass_through
        self.operator_flags = list(operator_flags)
        self.batch_time = batch_time
        self.metrics_port = find_free_port()
        self.worker: Any = None

    def start(self) -> None:
        from streamcascade.benchkit.stream_io import start_worker, worker_command
        from streamcascade.demo import DATA

        topics = dict(self.topics)
        extra = ["--batch-size", "200", "--batch-time", str(self.batch_time),
                 "--metrics-port", str(self.metrics_port)]
        if self.pass_through:
            topics = {"input": topics["input"], "output": topics["output"]}
            extra.append("--pass-through")
        else:
            extra += ["--task", "hatespeech", "--llm", LLM, "--llm-records", str(DATA),
                      *self.operator_flags]
        argv = worker_command(self.bootstrap, self.app_id, topics, extra)
        self.worker = start_worker(argv, {"STREAMCASCADE_STATE_SIGNING_KEY": self.key}, self.log)

    def stop(self) -> None:
        from streamcascade.benchkit.stream_io import stop_worker

        if self.worker is not None:
            stop_worker(self.worker)


def _loop_lag_buckets(port: int) -> dict[float, float]:
    """The worker's event-loop lag histogram: probes at or under each bound (s), cumulative."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {float(sample.labels["le"]): sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "streamcascade_event_loop_lag_seconds"
            for sample in family.samples if sample.name.endswith("_bucket")}


def _loop_lag_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Probes of the run (every 50 ms) and the share that found the loop stalled past 10, 25
    and 50 ms."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get(float("inf"), 0.0)
    summary: dict[str, Any] = {"probes": int(total)}
    for bound in (0.01, 0.025, 0.05):
        over = total - counts.get(bound, 0.0)
        summary[f"over_{int(bound * 1000)}ms"] = over / total if total else float("nan")
    return summary


def _produce(bootstrap: str, topic: str, rows: list[Any], rate: float | None) -> dict[str, int]:
    """Produce events (paced at ``rate``/s when given); returns each id's create time (ms)."""
    from streamcascade.benchkit.stream_io import make_producer
    from streamcascade.operators.codec import RecordCodec

    codec = RecordCodec()
    producer = make_producer(bootstrap, **{"linger.ms": 1 if rate else 20})
    sent: dict[str, int] = {}
    start = time.monotonic()
    for i, row in enumerate(rows):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                producer.poll(delay)
        now_ms = int(time.time() * 1000)
        producer.produce(topic, key=codec.key(row.id), timestamp=now_ms,
                         value=codec.encode_event_fields(row.id, row.text))
        sent[row.id] = now_ms
        producer.poll(0)
    producer.flush(60)
    return sent


def _collect(
    dep: _Deployment, ids: set[str], timeout: float
) -> dict[str, tuple[dict[str, Any], int]]:
    """Each id's output and its timestamp (ms), until all arrived or ``timeout``."""
    from streamcascade.benchkit.stream_io import TopicReader
    from streamcascade.errors import StreamcascadeError as Error

    reader = TopicReader(dep.bootstrap, [dep.topics["output"], dep.topics["dlq"]])
    got: dict[str, tuple[dict[str, Any], int]] = {}
    dead = 0
    deadline = time.monotonic() + timeout
    try:
        while len(got) + dead < len(ids):
            if time.monotonic() > deadline:
                raise Error(f"{dep.app_id}: {len(got)}/{len(ids)} outputs after {timeout:.0f} s "
                            f"(see {dep.log})")
            if dep.worker is not None and dep.worker.poll() is not None:
                raise Error(f"{dep.app_id}: the worker exited; see {dep.log}")
            for record in reader.poll(timeout=0.2):
                if record.topic == dep.topics["dlq"]:
                    dead += 1
                    continue
                value = json.loads(record.value or b"{}")
                got.setdefault(value["id"], (value, record.timestamp_ms))
    finally:
        reader.close()
    return got


def _throughput(got: dict[str, tuple[dict[str, Any], int]]) -> float:
    stamps = sorted(ts for _, ts in got.values())
    span = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else 0.0
    return (len(stamps) - 1) / span if span > 0 else float("nan")


def _latency_run(dep: _Deployment, rows: list[Any], rate: float, mode: str, settle: int = 0
                 ) -> tuple[dict[str, Any], list[float]]:
    """Stream ``rows[1:]`` at ``rate`` through a started worker; its figures, keyed by ``mode``,
    and the latencies (ms) of its first-stage answers. Latencies count the events after the
    first ``settle``; CPU and loop lag cover the whole stream.

    Beside the end-to-end latency it reports where the time went: ``in_worker`` is the
    output's own ``latency_ms`` (from Faust handing the record to the agent to its answer being
    written: the micro-batch wait and the answering), ``to_worker`` the rest (the bench's
    producer, the broker, the fetch and Faust's hand-over). The worker's CPU per event, and the
    share of the time its threads were ready to run but waited for a core, tell the cost of the
    code from the business of the machine.
    """
    from streamcascade.benchkit.stream_io import process_times

    # Wait until the worker answers, so that start-up is not counted as latency.
    _produce(dep.bootstrap, dep.topics["input"], rows[:1], None)
    _collect(dep, {rows[0].id}, timeout=120)
    click.echo(f"latency, {mode}: {len(rows) - 1} events at {rate:g}/s ...", err=True)
    load = list(os.getloadavg())  # to read the figures against
    before = process_times(dep.worker.pid)
    lag_before = _loop_lag_buckets(dep.metrics_port)
    sent = _produce(dep.bootstrap, dep.topics["input"], rows[1:], rate)
    got = _collect(dep, set(sent), timeout=120)
    after = process_times(dep.worker.pid)
    lag = _loop_lag_summary(lag_before, _loop_lag_buckets(dep.metrics_port))
    counted = {r.id for r in rows[1 + settle:]}
    total = {i: float(ts - sent[i]) for i, (_, ts) in got.items() if i in counted}
    inside = {i: float(v["latency_ms"]) for i, (v, _) in got.items() if i in counted}
    figures: dict[str, Any] = {
        f"p50_{mode}_ms": _percentile(list(total.values()), 50),
        f"p99_{mode}_ms": _percentile(list(total.values()), 99),
        f"{mode}_latency_breakdown_ms": {
            part: {"p50": _percentile(values, 50), "p99": _percentile(values, 99)}
            for part, values in (("in_worker", list(inside.values())),
                                 ("to_worker", [total[i] - inside[i] for i in total]))},
        f"{mode}_loadavg": load,
        f"{mode}_event_loop_lag": lag,
    }
    if before is not None and after is not None:
        cpu, waited = after.cpu_s - before.cpu_s, after.runqueue_s - before.runqueue_s
        figures[f"{mode}_cpu_ms_per_event"] = cpu * 1e3 / max(len(sent), 1)
        figures[f"{mode}_cpu_wait_share"] = waited / (cpu + waited) if cpu + waited else 0.0
    stage1 = [total[i] for i, (v, _) in got.items() if i in total and v["stage"] == "hashed"]
    return figures, stage1


def run_bench(bootstrap: str | None, events: int, warm: int, rate: float, seconds: float,
              target_share: float, out_dir: Path,
              batch_time: float = DEFAULTS.batch_time_s, settle: float = 0.5,
              publish_interval: float = DEFAULTS.publish_interval_s,
              repeats: int = 3) -> dict[str, Any]:
    from streamcascade.demo import DATA
    from streamcascade.models.datasets import read_stream

    rows = read_stream(DATA)
    if warm + events > len(rows):
        raise StreamcascadeError(f"--warm + --events must be at most {len(rows)}")
    warm_rows, bench_rows = rows[:warm], rows[warm:warm + events]
    key = secrets.token_hex(32)
    click.echo(f"warming the cascade on {warm} labelled events ...", err=True)
    state, version = _warm_state(warm_rows, key, target_share)
    result: dict[str, Any] = {"bench": "kafka", "events": events, "warm_events": warm,
                              "warm_model_version": version, "rate": rate, "llm": LLM,
                              "target_llm_share": target_share, "batch_time_s": batch_time,
                              "batch_size": 200, "latency_settle_s": settle,
                              "publish_interval_s": publish_interval,
                              "machine": platform.platform()}
    with ExitStack() as stack:
        if bootstrap is None:
            from streamcascade.kafka import LocalKafka

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sc-bench-kafka-"))
            broker = LocalKafka(Path(tmp) / "broker", tied_to_parent=True)
            click.echo("starting a local Kafka broker ...", err=True)
            bootstrap = broker.start()
            stack.callback(broker.stop)
        ids = {r.id for r in bench_rows}
        flags = ["--target-llm-share", str(target_share), "--publish-interval",
                 str(publish_interval)]
        # Pairs, alternated: a run lasts 1-2 s, and the pass-through alone measured anywhere from
        # 3,500 to 7,500 events/s between runs; the median of the pairs' ratios is steadier.
        pairs: list[dict[str, float]] = []
        stage1_outputs = outputs = 0
        for _ in range(repeats):
            pair: dict[str, float] = {}
            for mode in ("passthrough", "operator"):
                dep = _Deployment(bootstrap, mode, key, out_dir, mode == "passthrough",
                                  None if mode == "passthrough" else state, batch_time, flags)
                _produce(bootstrap, dep.topics["input"], bench_rows, None)
                click.echo(f"{mode}: {events} events pre-produced; starting the worker ...",
                           err=True)
                dep.start()
                try:
                    got = _collect(dep, ids, timeout=300)
                finally:
                    dep.stop()
                pair[mode] = _throughput(got)
                if mode == "operator":
                    outputs += len(got)
                    stage1_outputs += sum(v["stage"] == "hashed" for v, _ in got.values())
            pair["ratio"] = pair["operator"] / pair["passthrough"]
            pairs.append(pair)
        result["throughput_pairs"] = pairs
        for mode in ("passthrough", "operator"):
            result[f"{mode}_events_per_s"] = _percentile([p[mode] for p in pairs], 50)
        result["throughput_ratio"] = _percentile([p["ratio"] for p in pairs], 50)
        result["operator_stage1_share"] = stage1_outputs / max(outputs, 1)

        stage1: list[float] = []
        # Distinct events (ids key the latency pairs), from the part of the stream not learned.
        n_settle, n_counted = int(rate * settle), int(rate * seconds)
        latency_rows = rows[warm : warm + 1 + n_settle + n_counted]
        if len(latency_rows) < 1 + n_settle + n_counted:
            raise StreamcascadeError(f"--rate x (--settle + --seconds) must be below "
                                     f"{len(rows) - warm} (the stream's unseen events)")
        # The pass-through at the same rate is the latency the plumbing alone costs.
        for mode in ("passthrough", "operator"):
            dep = _Deployment(bootstrap, f"latency-{mode}", key, out_dir, mode == "passthrough",
                              None if mode == "passthrough" else state, batch_time, flags)
            dep.start()
            try:
                figures, answers = _latency_run(dep, latency_rows, rate, mode, n_settle)
            finally:
                dep.stop()
            result.update(figures)
            if mode == "operator":
                stage1 = answers
    result.update({
        "latency_events": n_counted, "latency_stage1_answers": len(stage1),
        "p50_stage1_ms": _percentile(stage1, 50), "p99_stage1_ms": _percentile(stage1, 99),
    })
    return result


@click.command("kafka")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True,
              help="Write the results here (JSON).")
@click.option("--bootstrap", envvar="STREAMCASCADE_BOOTSTRAP",
              help="Use this cluster instead of starting a local broker "
                   "[env: STREAMCASCADE_BOOTSTRAP].")
@click.option("--events", type=int, default=6000, show_default=True,
              help="Events of the throughput runs.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Throughput runs of each agent, alternated; the ratio is their pairs' median.")
@click.option("--warm", type=int, default=3000, show_default=True,
              help="Labelled events the cascade learns before the runs.")
@click.option("--rate", type=float, default=1000.0, show_default=True,
              help="Events/s of the latency run.")
@click.option("--seconds", type=float, default=7.0, show_default=True,
              help="Length of the latency run (counted).")
@click.option("--settle", type=float, default=0.5, show_default=True,
              help="Seconds of the latency stream, before the counted ones, that are not counted.")
@click.option("--target-llm-share", type=float, default=0.1, show_default=True)
@click.option("--batch-time", type=float, default=DEFAULTS.batch_time_s, show_default=True,
              help="Micro-batch wait of both workers (the operator's default).")
@click.option("--publish-interval", type=float, default=DEFAULTS.publish_interval_s,
              show_default=True, help="The operator's least seconds between model states.")
def command(json_out: str, bootstrap: str | None, events: int, repeats: int, warm: int,
            rate: float, seconds: float, settle: float, target_llm_share: float,
            batch_time: float, publish_interval: float) -> None:
    """End-to-end events/s of the cascade operator against a pass-through agent, and the p99
    latency of first-stage answers at a steady rate, on a real broker."""
    out = Path(json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        logs = out.parent / "bench-kafka-logs"
        logs.mkdir(exist_ok=True)
        result = run_bench(bootstrap, events, warm, rate, seconds, target_llm_share, logs,
                           batch_time, settle, publish_interval, repeats)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps({k: result.get(k) for k in (
        "throughput_ratio", "p99_stage1_ms", "p50_stage1_ms", "p50_passthrough_ms",
        "p99_passthrough_ms", "passthrough_events_per_s", "operator_events_per_s",
        "operator_stage1_share", "operator_loadavg", "operator_cpu_wait_share")}, indent=2))
