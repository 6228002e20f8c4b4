"""The main job: the HateSpeech stream through the cascade operator on a real Kafka broker.

It starts a local broker (unless given one), produces the bundled stream into a topic at a steady
rate, runs ``streamcascade worker`` with the recorded GPT-3.5 answers as the LLM, plays a
labelling team that sends the ground truth of a sample of the answered events to the feedback
topic a little later, waits for every event's output (or dead letter), and ends with a report
(quality against the LLM alone, LLM share, cost, dead letters) and a plot, in ``./out/``.

The ground truth is used for scoring always, and for learning only when it arrives on the
feedback topic: nothing sees the stream's future.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamcascade.benchkit.stream_io import (
    TopicReader,
    make_producer,
    start_worker,
    stop_worker,
    worker_command,
)
from streamcascade.errors import StreamcascadeError
from streamcascade.models.datasets import StreamRow, read_stream
from streamcascade.models.metrics import accuracy, task_metric
from streamcascade.models.tasks import TASKS, Task
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.topics import OperatorTopics, ensure_topics

DATA = Path(__file__).resolve().parent / "data" / "hatespeech.jsonl.gz"
LLM = "gpt-3.5-turbo-1106"
WINDOW = 500
#: ``--stages auto``: the demo picks its stage list (:func:`choose_stages`).
AUTO = "auto"


def choose_stages() -> tuple[str, str]:
    """The best stage list that keeps up with the demo's stream on this machine, and why.

    The frozen ONNX encoder after the hashed stage is worth its cost only where it keeps up with
    the demo's rate: on a CPU it falls behind (the stream then waits, the labels reach the
    learner late, and more events go to the LLM, not fewer), so there the hashed stage runs
    alone; with ONNX Runtime's CUDA provider and the encoder exported, both run. The fine-tuned
    stage trains too slowly on a CPU for the demo's few minutes and is never chosen here.
    """
    import onnxruntime as ort

    from streamcascade.models.stages.onnx_encoder import CUDA
    from streamcascade.onnx_exports.manifest import default_onnx_dir

    if CUDA not in ort.get_available_providers():
        return "hashed", "on a CPU the ONNX encoder falls behind the demo's rate"
    if not (default_onnx_dir() / "minilm-l6" / "manifest.json").is_file():
        return "hashed", ("the ONNX encoder is not exported (`make setup` or `streamcascade onnx "
                          "export`)")
    return "hashed,onnx", "ONNX Runtime has a GPU and the encoder is exported"


def _free_port() -> int:
    from streamcascade.kafka import find_free_port

    return find_free_port()


def run_stream(
    rows: list[StreamRow],
    bootstrap: str,
    out_dir: Path,
    rate: float,
    feedback_share: float,
    feedback_delay: float,
    partitions: int,
    timeout: float,
    worker_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run one worker over ``rows``; return the outputs and dead letters by event id."""
    run = uuid.uuid4().hex[:8]
    topics = {"input": f"demo-{run}-events", "output": f"demo-{run}-predictions",
              "feedback": f"demo-{run}-feedback", "dlq": f"demo-{run}-dead-letters",
              "state-topic": f"demo-{run}-model-state"}
    ensure_topics(bootstrap, OperatorTopics(topics["input"], topics["output"], topics["feedback"],
                                            topics["dlq"], topics["state-topic"],
                                            partitions=partitions))
    metrics_port = _free_port()
    argv = worker_command(bootstrap, f"demo-{run}", topics, [
        "--task", "hatespeech", "--llm", LLM, "--llm-records", str(DATA),
        "--metrics-port", str(metrics_port), *worker_args])
    env = {"STREAMCASCADE_STATE_SIGNING_KEY": secrets.token_hex(32)}
    codec = RecordCodec()
    truth = {r.id: r.label for r in rows}
    sample = random.Random(0)
    labelled = {r.id for r in rows if sample.random() < feedback_share}
    outputs: dict[str, dict[str, Any]] = {}
    dead: dict[str, dict[str, Any]] = {}
    due: list[tuple[float, str]] = []
    sent_labels = 0
    metrics_text = ""
    producer = make_producer(bootstrap)
    reader = TopicReader(bootstrap, [topics["output"], topics["dlq"]])
    worker = start_worker(argv, env, out_dir / "worker.log")
    try:
        start = time.monotonic()
        produced = 0
        # On a terminal the bar redraws in place; in a log (CI) each redraw is a line: fewer.
        bar = tqdm(total=len(rows), desc="events answered", unit="ev",
                   mininterval=0.1 if sys.stderr.isatty() else 5.0)
        while len(outputs) + len(dead) < len(rows) or due:
            now = time.monotonic()
            if worker.poll() is not None:
                raise StreamcascadeError(f"the worker exited ({worker.returncode}); see "
                                         f"{out_dir / 'worker.log'}")
            if now - start > timeout:
                raise StreamcascadeError(f"timed out after {timeout:.0f} s with "
                                         f"{len(outputs)}/{len(rows)} outputs")
            target = min(len(rows), int((now - start) * rate) + 1)
            while produced < target:
                row = rows[produced]
                producer.produce(topics["input"], key=codec.key(row.id),
                                 value=codec.encode_event_fields(row.id, row.text))
                produced += 1
            producer.poll(0)
            before = len(outputs) + len(dead)
            for record in reader.poll(timeout=0.05):
                value = json.loads(record.value or b"{}")
                if record.topic == topics["output"]:
                    if value["id"] not in outputs and value["id"] in labelled:
                        heapq.heappush(due, (now + feedback_delay, value["id"]))
                    outputs[value["id"]] = value
                else:
                    dead[(record.key or b"").decode()] = value
            bar.update(len(outputs) + len(dead) - before)
            while due and due[0][0] <= now:
                _, event_id = heapq.heappop(due)
                label = truth[event_id] or ""
                producer.produce(topics["feedback"], key=codec.key(event_id),
                                 value=codec.encode_feedback(event_id, label, "ground_truth"))
                sent_labels += 1
        bar.close()
        producer.flush(30)
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            metrics_text = urllib.request.urlopen(url, timeout=5).read().decode()
        elapsed = time.monotonic() - start
    finally:
        stop_worker(worker)
        reader.close()
        # Faust's data folder of this run's app (no tables in it): not a result, and one per run.
        shutil.rmtree(out_dir / f"demo-{run}-data", ignore_errors=True)
    return {"outputs": outputs, "dead": dead, "labels_sent": sent_labels,
            "elapsed_s": elapsed, "metrics": metrics_text, "topics": topics}


def build_report(rows: list[StreamRow], task: Task, result: dict[str, Any],
                 stages: str = "hashed", stages_why: str = "") -> dict[str, Any]:
    """Quality against the LLM alone, LLM share, cost, dead letters, and the stage list used
    (``stages``, before the LLM) with the reason it was used."""
    labels = task.labels
    outputs, dead = result["outputs"], result["dead"]
    truth = [labels.index(r.label or "") for r in rows]
    ours = [labels.index(outputs[r.id]["label"]) if r.id in outputs else None for r in rows]
    llm_alone = [task.parse_answer(r.llm.get(LLM, "")) for r in rows]
    positive = labels.index(task.positive_label) if task.positive_label else None
    at_llm = [r.id in outputs and outputs[r.id]["stage"] == LLM for r in rows]
    from streamcascade.models.costs import llm_cost

    cost = sum(float(outputs[r.id]["cost"]) for r in rows if r.id in outputs)
    cost_llm_alone = llm_cost(LLM) * len(rows)
    n = len(rows)
    thirds = [at_llm[i * n // 3 : (i + 1) * n // 3] for i in range(3)]
    share_by_third = [sum(part) / max(len(part), 1) for part in thirds]
    return {
        "stream": "hatespeech", "stages": stages, "stages_why": stages_why,
        "events": len(rows), "outputs": len(outputs),
        "dead_letters": dict(Counter(d.get("reason", "?") for d in dead.values())),
        "metric": task.metric + (f" ({task.positive_label})" if task.positive_label else ""),
        "quality": task_metric(task.metric, ours, truth, positive),
        "quality_llm_alone": task_metric(task.metric, llm_alone, truth, positive),
        "accuracy": accuracy(ours, truth),
        "accuracy_llm_alone": accuracy(llm_alone, truth),
        "llm_share": sum(at_llm) / len(rows),
        "llm_share_by_third": share_by_third,
        "cost": cost, "cost_llm_alone": cost_llm_alone,
        "cost_saved": 1 - cost / cost_llm_alone if cost_llm_alone else 0.0,
        "ground_truth_labels_sent": result["labels_sent"],
        "final_model_version": max((int(o["model_version"]) for o in outputs.values()), default=0),
        "elapsed_s": result["elapsed_s"],
        "events_per_s": len(rows) / result["elapsed_s"] if result["elapsed_s"] else 0.0,
        "series": {"at_llm": at_llm, "correct": [o == t for o, t in zip(ours, truth, strict=True)],
                   "llm_correct": [a == t for a, t in zip(llm_alone, truth, strict=True)]},
    }


def _rolling(values: list[bool], window: int) -> list[float]:
    out, total = [], 0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    x = range(1, len(series["at_llm"]) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(x, _rolling(series["at_llm"], WINDOW), color="tab:red")
    top.set_ylabel(f"LLM share\n(last {WINDOW} events)")
    top.set_ylim(0, 1.05)
    top.set_title("HateSpeech through the streamcascade Kafka operator")
    bottom.plot(x, _rolling(series["correct"], WINDOW), label="cascade operator")
    bottom.plot(x, _rolling(series["llm_correct"], WINDOW), label=f"{LLM} alone", alpha=0.8)
    bottom.set_ylabel(f"accuracy\n(last {WINDOW} events)")
    bottom.set_xlabel("event (stream order)")
    bottom.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    r = report
    lines = [
        f"streamcascade demo: {r['events']} HateSpeech events through Kafka in "
        f"{r['elapsed_s']:.0f} s ({r['events_per_s']:.0f} events/s end to end, start-up included)",
        f"  stages: {r['stages']}, then {LLM}"
        + (f" ({r['stages_why']})" if r.get("stages_why") else ""),
        f"  outputs: {r['outputs']}   dead letters: {r['dead_letters'] or 'none'}",
        f"  {r['metric']}: cascade {r['quality']:.4f}   {LLM} alone {r['quality_llm_alone']:.4f}",
        f"  accuracy: cascade {r['accuracy']:.4f}   {LLM} alone {r['accuracy_llm_alone']:.4f}",
        f"  LLM share: {r['llm_share']:.1%} (by third of the stream: "
        + ", ".join(f"{s:.1%}" for s in r["llm_share_by_third"]) + ")",
        f"  cost: {r['cost']:,.0f} vs {r['cost_llm_alone']:,.0f} for the LLM alone "
        f"({r['cost_saved']:.1%} saved; paper units)",
        f"  ground-truth labels sent to the feedback topic: {r['ground_truth_labels_sent']}"
        f"   final model version: {r['final_model_version']}",
    ]
    return "\n".join(lines)


def run_demo(
    limit: int | None = None,
    rate: float = 400.0,
    feedback_share: float = 0.1,
    feedback_delay: float = 2.0,
    out_dir: str = "out",
    bootstrap: str | None = None,
    partitions: int = 2,
    timeout: float = 600.0,
    target_llm_share: float | None = None,
    max_quality_loss: float | None = None,
    stages: str = AUTO,
) -> dict[str, Any]:
    """Run the main job; see the module docstring. Returns the report. ``stages`` is a stage
    list, or ``"auto"``: the one :func:`choose_stages` picks."""
    stages_why = "as asked"
    if stages == AUTO:
        stages, stages_why = choose_stages()
    worker_args: list[str] = ["--stages", stages]
    if target_llm_share is not None:
        worker_args += ["--target-llm-share", str(target_llm_share)]
    if max_quality_loss is not None:
        worker_args += ["--max-quality-loss", str(max_quality_loss)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_stream(DATA, limit)
    if bootstrap is None:
        from streamcascade.settings import Settings

        bootstrap = Settings().bootstrap  # STREAMCASCADE_BOOTSTRAP: an existing cluster
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            from streamcascade.kafka import LocalKafka

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="streamcascade-demo-"))
            broker = LocalKafka(Path(tmp) / "broker", tied_to_parent=True)
            print("starting a local Kafka broker ...", flush=True)
            bootstrap = broker.start()
            stack.callback(broker.stop)
        print(f"broker {bootstrap}; streaming {len(rows)} events at {rate:g}/s through "
              f"stages {stages} ({stages_why})", flush=True)
        result = run_stream(rows, bootstrap, out, rate, feedback_share, feedback_delay,
                            partitions, timeout, tuple(worker_args))
    report = build_report(rows, TASKS["hatespeech"], result, stages, stages_why)
    plot_report(report, out / "demo.png")
    (out / "metrics.txt").write_text(result["metrics"])
    summary = {k: v for k, v in report.items() if k != "series"}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = format_report(report)
    (out / "report.txt").write_text(text + "\n")
    print(text)
    print(f"  written: {out / 'report.txt'}, {out / 'report.json'}, {out / 'demo.png'}, "
          f"{out / 'metrics.txt'}, {out / 'worker.log'}")
    return report
