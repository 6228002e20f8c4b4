"""``streamcascade bench feedback-flood``: answer latency while a flood of unmatched feedback
expires.

One cascade worker (warm state, the recorded GPT-3.5, as in ``bench kafka``) with a short
decision time-to-live (``--ttl``) answers a steady stream of events (``--rate`` per second) in
phases of ``--seconds`` each, on the same worker, ``--repeats`` rounds of two:

1. **quiet**: events only;
2. **flood**: the same, and one second in, ``--flood`` feedback records for events that never come
   (distinct ids, the costlier case: repeats of one id are dropped on arrival). They wait in the
   decision log, expire ``--ttl`` seconds later and become ``feedback_unmatched`` dead letters,
   while events keep coming.

An answer's latency is its output record's timestamp minus its input record's (both create
times on this machine's clock). Reported per phase: p50, p99 and the largest latency (and the
largest of the events sent in each second), the worker's event-loop lag (the share of its 50 ms
probes late by more than 10, 25 and 50 ms), its CPU seconds and the share of its ready time it
waited for a core (a busy machine, not the worker's code), and ``p99_increase_ms``, the flood's
p99 over the quiet one's (the target is under 50 ms); then the medians over the rounds. The run
checks that every flood record became a dead letter, so the expiry is really measured.
"""

from __future__ import annotations

import json
import platform
import secrets
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from streamcascade.commands.bench_kafka import (
    LLM,
    _Deployment,
    _loop_lag_buckets,
    _loop_lag_summary,
    _percentile,
    _produce,
    _warm_state,
)
from streamcascade.errors import StreamcascadeError


def _flood(bootstrap: str, topic: str, n: int, prefix: str) -> None:
    """``n`` ground-truth feedback records for ids no event has."""
    from streamcascade.benchkit.stream_io import make_producer, produce_all
    from streamcascade.operators.codec import RecordCodec

    codec = RecordCodec()
    records = ((codec.key(f"{prefix}-{i}"), codec.encode_feedback(f"{prefix}-{i}", "hate",
                                                                  "ground_truth"))
               for i in range(n))
    produce_all(make_producer(bootstrap, **{"linger.ms": 20}), topic, records)


def _produce_paced(bootstrap: str, topic: str, rows: list[Any], rate: float) -> dict[str, int]:
    """Produce events at ``rate``/s, each stamped when produced; returns each id's stamp (ms)."""
    from streamcascade.benchkit.stream_io import make_producer
    from streamcascade.operators.codec import RecordCodec

    codec = RecordCodec()
    producer = make_producer(bootstrap, **{"linger.ms": 1})
    sent: dict[str, int] = {}
    start = time.monotonic()
    for i, row in enumerate(rows):
        while (delay := start + i / rate - time.monotonic()) > 0:
            producer.poll(delay)  # (returns early when it served a delivery report)
        now_ms = int(time.time() * 1000)
        producer.produce(topic, key=codec.key(row.id), timestamp=now_ms,
                         value=codec.encode_event_fields(row.id, row.text))
        sent[row.id] = now_ms
        producer.poll(0)
    producer.flush(60)
    return sent


def _dead_letters(dep: _Deployment, reason: str, want: int, timeout: float) -> int:
    """How many dead letters of ``reason`` the dead-letter topic has (waiting up to ``timeout``
    for ``want`` of them)."""
    from streamcascade.benchkit.stream_io import TopicReader

    reader = TopicReader(dep.bootstrap, [dep.topics["dlq"]])
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < want and time.monotonic() < deadline:
            for record in reader.poll(timeout=0.5):
                seen += json.loads(record.value or b"{}").get("reason") == reason
    finally:
        reader.close()
    return seen


def _outputs(dep: _Deployment, ids: set[str], timeout: float) -> dict[str, tuple[dict[str, Any],
                                                                                  int]]:
    """Each id's output and its timestamp (ms), until all arrived or ``timeout`` (dead letters,
    the flood's among them, are not waited for: every event of the bench is answered)."""
    from streamcascade.benchkit.stream_io import TopicReader

    reader = TopicReader(dep.bootstrap, [dep.topics["output"]])
    got: dict[str, tuple[dict[str, Any], int]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not ids <= set(got):
            if time.monotonic() > deadline:
                raise StreamcascadeError(f"{len(ids & set(got))}/{len(ids)} outputs after "
                                         f"{timeout:.0f} s (see {dep.log})")
            for record in reader.poll(timeout=0.2):
                value = json.loads(record.value or b"{}")
                got.setdefault(value["id"], (value, record.timestamp_ms))
    finally:
        reader.close()
    return got


def _phase(dep: _Deployment, rows: list[Any], rate: float, mode: str,
           flood: int = 0) -> dict[str, Any]:
    """Stream ``rows`` at ``rate`` (and the flood, one second in); this phase's figures."""
    from streamcascade.benchkit.stream_io import process_times

    lag_before = _loop_lag_buckets(dep.metrics_port)
    cpu_before = process_times(dep.worker.pid)
    flooding = None
    if flood:
        def start_flood() -> None:
            time.sleep(1.0)
            _flood(dep.bootstrap, dep.topics["feedback"], flood, f"flood-{secrets.token_hex(3)}")

        flooding = threading.Thread(target=start_flood, daemon=True)
        flooding.start()
    click.echo(f"{mode}: {len(rows)} events at {rate:g}/s"
               + (f", {flood} unmatched feedback records one second in" if flood else "")
               + " ...", err=True)
    started_ms = time.time() * 1000
    sent = _produce_paced(dep.bootstrap, dep.topics["input"], rows, rate)
    got = _outputs(dep, set(sent), timeout=120)
    if flooding is not None:
        flooding.join(60)
    cpu_after = process_times(dep.worker.pid)
    latencies = [float(ts - sent[i]) for i, (_, ts) in got.items() if i in sent]
    inside = [float(v["latency_ms"]) for i, (v, _) in got.items() if i in sent]
    # The largest latency of the events sent in each second of the phase: when a stall came.
    by_second: dict[int, float] = {}
    for i, (_, ts) in got.items():
        if i not in sent:
            continue
        second = int((sent[i] - started_ms) // 1000)
        by_second[second] = max(by_second.get(second, 0.0), float(ts - sent[i]))
    figures: dict[str, Any] = {}
    if cpu_before is not None and cpu_after is not None:
        # The worker's CPU in the phase, and the share of its ready time spent waiting for a core
        # (other processes' load, not the worker's code).
        cpu = cpu_after.cpu_s - cpu_before.cpu_s
        waited = cpu_after.runqueue_s - cpu_before.runqueue_s
        figures[f"{mode}_cpu_s"] = cpu
        figures[f"{mode}_cpu_wait_share"] = waited / (cpu + waited) if cpu + waited else 0.0
    return figures | {
        f"{mode}_p50_ms": _percentile(latencies, 50),
        f"{mode}_p99_ms": _percentile(latencies, 99),
        f"{mode}_max_ms": max(latencies, default=float("nan")),
        f"{mode}_in_worker_p99_ms": _percentile(inside, 99),
        f"{mode}_answers": len(latencies),
        f"{mode}_max_ms_by_second": [by_second[k] for k in sorted(by_second)],
        f"{mode}_event_loop_lag": _loop_lag_summary(lag_before,
                                                    _loop_lag_buckets(dep.metrics_port)),
    }


def run_bench(bootstrap: str | None, rate: float, seconds: float, flood: int, ttl: float,
              warm: int, target_share: float, repeats: int, out_dir: Path) -> dict[str, Any]:
    from streamcascade.demo import DATA
    from streamcascade.models.datasets import read_stream

    rows = read_stream(DATA)
    per_phase = int(rate * seconds)
    if warm + 1 + 2 * repeats * per_phase > len(rows):
        raise StreamcascadeError(f"--warm + 2 x --repeats x --rate x --seconds must be below "
                                 f"{len(rows)} (the stream's events)")
    if ttl + 2.5 > seconds:
        raise StreamcascadeError("--seconds must exceed --ttl by a few seconds, so that the "
                                 "flood expires while the phase's events flow")
    key = secrets.token_hex(32)
    click.echo(f"warming the cascade on {warm} labelled events ...", err=True)
    state, version = _warm_state(rows[:warm], key, target_share)
    first = rows[warm]
    phases = [rows[warm + 1 + k * per_phase:warm + 1 + (k + 1) * per_phase]
              for k in range(2 * repeats)]
    result: dict[str, Any] = {"bench": "feedback-flood", "rate": rate, "seconds": seconds,
                              "flood": flood, "ttl_s": ttl, "repeats": repeats,
                              "warm_events": warm, "warm_model_version": version, "llm": LLM,
                              "target_llm_share": target_share, "machine": platform.platform(),
                              "rounds": []}
    with ExitStack() as stack:
        if bootstrap is None:
            from streamcascade.kafka import LocalKafka

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sc-bench-flood-"))
            broker = LocalKafka(Path(tmp) / "broker", tied_to_parent=True)
            click.echo("starting a local Kafka broker ...", err=True)
            bootstrap = broker.start()
            stack.callback(broker.stop)
        flags = ["--target-llm-share", str(target_share), "--decision-ttl", str(ttl)]
        dep = _Deployment(bootstrap, "flood", key, out_dir, False, state, 0.01, flags)
        dep.start()
        stack.callback(dep.stop)
        # Until the worker answers, so that its start is not counted.
        _produce(bootstrap, dep.topics["input"], [first], None)
        _outputs(dep, {first.id}, timeout=120)
        dead = 0
        for k in range(repeats):  # quiet and flood in turn: the machine's drift hits both
            figures = _phase(dep, phases[2 * k], rate, "quiet")
            figures.update(_phase(dep, phases[2 * k + 1], rate, "flood", flood))
            dead += flood
            figures["flood_dead_letters"] = _dead_letters(dep, "feedback_unmatched", dead,
                                                          timeout=ttl + 30) - (dead - flood)
            figures["p99_increase_ms"] = figures["flood_p99_ms"] - figures["quiet_p99_ms"]
            result["rounds"].append(figures)
            if figures["flood_dead_letters"] < flood:
                raise StreamcascadeError(
                    f"only {figures['flood_dead_letters']} of the {flood} flood records became "
                    f"dead letters: the expiry was not measured (see {dep.log})")
    for name in ("quiet_p99_ms", "flood_p99_ms", "p99_increase_ms", "quiet_p50_ms",
                 "flood_p50_ms", "quiet_cpu_wait_share", "flood_cpu_wait_share"):
        values = [r[name] for r in result["rounds"] if name in r]
        result[f"median_{name}"] = _percentile(values, 50)
    return result


@click.command("feedback-flood")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True,
              help="Write the results here (JSON).")
@click.option("--bootstrap", envvar="STREAMCASCADE_BOOTSTRAP",
              help="Use this cluster instead of starting a local broker "
                   "[env: STREAMCASCADE_BOOTSTRAP].")
@click.option("--rate", type=float, default=200.0, show_default=True,
              help="Events/s of each phase.")
@click.option("--seconds", type=float, default=10.0, show_default=True,
              help="Length of each phase.")
@click.option("--flood", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Unmatched feedback records of the flood.")
@click.option("--ttl", type=float, default=3.0, show_default=True,
              help="The worker's decision time-to-live (s): when the flood expires.")
@click.option("--warm", type=int, default=2000, show_default=True,
              help="Labelled events the cascade learns before the run.")
@click.option("--target-llm-share", type=float, default=0.1, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rounds of a quiet phase then a flood phase; the figures are their medians.")
def command(json_out: str, bootstrap: str | None, rate: float, seconds: float, flood: int,
            ttl: float, warm: int, target_llm_share: float, repeats: int) -> None:
    """p99 answer latency while 10,000 unmatched feedback records expire, against the same
    worker's quiet p99."""
    out = Path(json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        logs = out.parent / "bench-feedback-flood-logs"
        logs.mkdir(exist_ok=True)
        result = run_bench(bootstrap, rate, seconds, flood, ttl, warm, target_llm_share,
                           repeats, logs)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps({k: v for k, v in result.items() if k.startswith("median_")},
                          indent=2))
