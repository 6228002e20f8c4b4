"""How training cost grows with the number of events: epoch time and peak memory per engine.

A stream's hashed features are repeated with every copy's features re-hashed (``f -> mix(f,
copy) mod n_features``), so a larger set has new features in the same proportion as the real
one, not the same ones over again; labels are the originals'. Each (engine, size) runs in its own
process, so that its peak memory is its own: the Python process's peak resident set, and for
Spark the JVM's too. Spark's start-up is timed apart from the epoch. Where a whole epoch is too
long to wait for, ``max_steps`` times its first steps and scales them to the epoch's number (the
run says so: ``extrapolated_from_steps``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamcascade.models.relational import features, models
from streamcascade.models.relational.driver import Problem, RelationalTrainer, TrainSpec
from streamcascade.models.relational.engines import DuckDBEngine, Engine, SparkEngine
from streamcascade.models.relational.history import read_history
from streamcascade.models.relational.pipeline import new_stage
from streamcascade.models.tasks import TASKS, Task

ENGINES = ("duckdb", "spark:local[1]", "spark:local[2]")
BATCH = 4096
_MIX = np.int64(0x9E3779B1)
_MARK = "scale-result: "


def scaled_problem(dataset: Path, task: Task, n_events: int,
                   n_features: int = 2**20) -> Problem:
    """``n_events`` events from the stream's, repeated with re-hashed features."""
    events = read_history(dataset, task).events
    texts = [e.text for e in events]
    stage = new_stage(task, {"n_features": n_features})
    features.set_idf(stage, features.document_frequencies(stage, texts), len(texts))
    base = features.feature_relation(stage, texts)
    n_base, copies = len(texts), -(-n_events // len(texts))
    copy = np.repeat(np.arange(copies, dtype=np.int64), base["e"].size)
    f = np.tile(base["f"], copies)
    mixed = (f * _MIX + copy * np.int64(0x85EBCA6B)) % n_features
    x = {"e": np.tile(base["e"], copies) + copy * n_base,
         "f": np.where(f == features.BIAS, features.BIAS, mixed),
         "v": np.tile(base["v"], copies)}
    keep = x["e"] < n_events
    x = {k: v[keep] for k, v in x.items()}
    k = len(task.labels)
    labels = np.tile(np.array([e.label for e in events]), copies)[:n_events]
    domain = np.unique(x["f"])
    return Problem(models.softmax_regression, n_events, x,
                   {"e": np.arange(n_events), "c": labels},
                   {"f": np.repeat(domain, k), "c": np.tile(np.arange(k), domain.size),
                    "v": np.zeros(domain.size * k)})


def measure(dataset: Path, task_name: str, engine_name: str, n_events: int,
            max_steps: int | None = None) -> dict[str, Any]:
    """One epoch of the first stage on ``n_events`` events (run in a process of its own), or its
    first ``max_steps`` steps scaled to the epoch's."""
    start = time.perf_counter()
    problem = scaled_problem(dataset, TASKS[task_name], n_events)
    out: dict[str, Any] = {"engine": engine_name, "events": n_events,
                           "tuples": int(problem.x["e"].size),
                           "weights": int(problem.weights["v"].size),
                           "prepare_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    engine: Engine = (DuckDBEngine() if engine_name == "duckdb"
                      else SparkEngine(engine_name.partition(":")[2]))
    out["startup_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    trainer = RelationalTrainer(engine, problem, TrainSpec(epochs=1, batch_size=BATCH))
    out["load_seconds"] = time.perf_counter() - start
    if max_steps is None:
        result = trainer.train(track_loss=False)
        out.update(epoch_seconds=result.step_seconds, steps=result.steps)
    else:
        start = time.perf_counter()
        steps = trainer.begin_epoch(0)
        begun = time.perf_counter()
        done = min(steps, max_steps)
        for b in range(done):
            trainer.step(b)
        per_step = (time.perf_counter() - begun) / done
        out.update(epoch_seconds=begun - start + per_step * steps, steps=steps,
                   step_seconds=per_step, extrapolated_from_steps=done)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if isinstance(engine, SparkEngine):
        out["jvm_peak_rss_mb"] = _jvm_peak_mb(engine)
    return out


def _jvm_peak_mb(engine: SparkEngine) -> float | None:
    proc = getattr(engine.spark.sparkContext._gateway, "proc", None)
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text() if proc else ""
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return None


def scale_bench(dataset: Path, task: Task, sizes: list[int], plot: Path | None = None,
                engines: tuple[str, ...] = ENGINES, timeout: float = 3600,
                max_steps: int | None = None) -> dict[str, Any]:
    """:func:`measure` for every engine and size, each in a fresh process."""
    runs = []
    for engine in engines:
        for size in sizes:
            code = ("import json, sys; from streamcascade.models.relational.scale import measure;"
                    " limit = int(sys.argv[5]) if sys.argv[5] != 'None' else None;"
                    f" print({_MARK!r} + json.dumps(measure(*sys.argv[1:4], int(sys.argv[4]),"
                    " limit)))")
            try:
                done = subprocess.run([sys.executable, "-c", code, str(dataset), task.name,
                                       engine, str(size), str(max_steps)],
                                      capture_output=True, text=True,
                                      timeout=timeout, check=False)
                lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
                runs.append(json.loads(lines[-1][len(_MARK):]) if lines else
                            {"engine": engine, "events": size,
                             "error": done.stderr.strip().splitlines()[-1:]})
            except subprocess.TimeoutExpired:
                runs.append({"engine": engine, "events": size, "error": f"over {timeout}s"})
    result: dict[str, Any] = {"dataset": str(dataset), "batch_size": BATCH, "runs": runs,
                              "max_steps": max_steps}
    if plot is not None:
        result["plot"] = str(_plot(runs, plot))
    return result


def _plot(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for engine in dict.fromkeys(r["engine"] for r in runs):
        done = [r for r in runs if r["engine"] == engine and "epoch_seconds" in r]
        if done:
            line, = ax.loglog([r["events"] for r in done], [r["epoch_seconds"] for r in done],
                              "o-", label=engine)
            guessed = [r for r in done if "extrapolated_from_steps" in r]
            if guessed:  # hollow: an epoch scaled from its first steps
                ax.loglog([r["events"] for r in guessed], [r["epoch_seconds"] for r in guessed],
                          "o", markerfacecolor="white", color=line.get_color())
    ax.set_xlabel("events (stream repeated, features re-hashed)")
    ax.set_ylabel(f"one epoch, batches of {BATCH} (s)")
    ax.set_title("hollow: an epoch scaled from its first steps", fontsize=9)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
