"""``streamcascade bench train``: training from history, checked and measured in one run.

- ``grad_rel_error_max``: the derived (SQL) gradients of both models against the textbook
  gradients in numpy, and against central finite differences of the SQL loss, on real hashed
  features (largest relative error; at most 1e-6 is the target).
- ``duckdb_vs_spark_max_abs_diff``: the same first stage trained 20 steps on both engines.
- ``heldout_accuracy``: per stream, the first stage trained on the first half (ground truth),
  scored on the second; beside it scikit-learn's ``SGDClassifier`` (log loss, defaults) on the
  same hashed features, and one online pass of the stage itself.
- ``streams``: per stream, the second half replayed through a cascade started cold and one
  started from the trained state (``warm``: trained on ground truth; ``warm_llm_labels``: on the
  recorded LLM's answers), same LLM, same default operating point.

The IMDB stream is sorted by label, so it is shuffled first (seed 0, as ``replay --shuffle``);
the others keep their order. ``--scale`` measures epoch time and peak memory apart.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from streamcascade.errors import StreamcascadeError
from streamcascade.models import replay as rp
from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.factory import make_llm
from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.relational import features, models, reference
from streamcascade.models.relational.autodiff import gradients
from streamcascade.models.relational.driver import Problem, RelationalTrainer, TrainSpec
from streamcascade.models.relational.engines import DuckDBEngine, Engine, SparkEngine
from streamcascade.models.relational.history import LabelledEvent, read_history
from streamcascade.models.relational.pipeline import TrainOptions, new_stage, train_from_history
from streamcascade.models.relational.sql import select
from streamcascade.models.tasks import TASKS, Task

STREAMS = ("imdb", "hatespeech", "isear")
SCALE_ENGINES = ("duckdb", "spark:local[1]", "spark:local[2]")


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    # Coordinates whose true value cancels to ~0 are compared to the gradient's scale.
    floor = 1e-6 * float(np.abs(want).max())
    return float((np.abs(got - want) / np.maximum(np.abs(want), floor)).max())


def _check_model(engine: Engine, build: Any, data: dict[str, Any], keys: tuple[str, ...],
                 check: Any, n_probes: int = 8) -> dict[str, float]:
    for name in ("x", "y", "w"):
        engine.put(f"gc_{name}", data[name])
    loss, w = build(models.Tables("gc_x", "gc_y", "gc_w"))
    grad = gradients(loss, [w])[w]
    assert grad is not None, "the loss does not depend on the weights"
    got = engine.fetch(select(grad) + " ORDER BY " + ", ".join(keys))
    order = np.lexsort([data["w"][k] for k in reversed(keys)])
    _, want = check(data["x"], data["y"], data["w"], data["n"])
    vs_numpy = _rel_error(got["v"], want["v"][order])
    probes = np.argsort(-np.abs(want["v"]))[:n_probes]
    worst, h = 0.0, 1e-5
    for row in probes.tolist():
        sides = []
        for sign in (1.0, -1.0):
            moved = {**data["w"], "v": data["w"]["v"].copy()}
            moved["v"][row] += sign * h
            engine.put("gc_w", moved)
            sides.append(float(engine.fetch(select(loss))["v"][0]))
        fd = (sides[0] - sides[1]) / (2 * h)
        worst = max(worst, abs(fd - want["v"][row]) / abs(want["v"][row]))
    return {"vs_numpy": vs_numpy, "vs_finite_differences": worst, "n_weights": len(order)}


def gradient_checks(dataset: Path, task: Task, seed: int) -> dict[str, Any]:
    """Both models' derived gradients on the first 64 events of ``dataset``."""
    rng = np.random.default_rng(seed)
    events = read_history(dataset, task, limit=64).events
    texts = [e.text for e in events]
    stage = new_stage(task, {})
    features.set_idf(stage, features.document_frequencies(stage, texts), len(texts))
    x = features.feature_relation(stage, texts)
    n, k = len(texts), len(task.labels)
    domain = np.unique(x["f"])
    softmax = {"x": x, "n": n,
               "y": {"e": np.arange(n), "c": np.array([e.label for e in events]),
                     "wt": np.full(n, 1.0 / n)},
               "w": {"f": np.repeat(domain, k), "c": np.tile(np.arange(k), domain.size),
                     "v": rng.normal(scale=0.5, size=domain.size * k)}}
    policy = DeferralPolicy(k, n_extra=1)
    inputs = policy.features(rng.dirichlet(np.ones(k), n), np.array([len(t) for t in texts]),
                             rng.random((n, 1)))
    d = inputs.shape[1]
    logistic = {"x": {"e": np.repeat(np.arange(n), d), "f": np.tile(np.arange(d), n),
                      "v": inputs.ravel()}, "n": n,
                "y": {"e": np.arange(n), "t": (rng.random(n) < 0.3).astype(float),
                      "wt": np.full(n, 1.0 / n)},
                "w": {"f": np.arange(d), "v": rng.normal(scale=0.5, size=d)}}
    engine = DuckDBEngine()
    try:
        return {"first_stage": _check_model(engine, models.softmax_regression, softmax,
                                            ("f", "c"), reference.softmax_regression),
                "policy": _check_model(engine, models.logistic_regression, logistic, ("f",),
                                       reference.logistic_regression)}
    finally:
        engine.close()


def engine_parity(dataset: Path, task: Task, master: str, steps: int = 20) -> dict[str, Any]:
    """The first stage trained ``steps`` steps on DuckDB and on Spark: the largest difference."""
    events = read_history(dataset, task, limit=steps * 8).events
    texts = [e.text for e in events]
    stage = new_stage(task, {"n_features": 2**14})
    features.set_idf(stage, features.document_frequencies(stage, texts), len(texts))
    x = features.feature_relation(stage, texts)
    k, domain = len(task.labels), np.unique(x["f"])
    problem = Problem(models.softmax_regression, len(texts), x,
                      {"e": np.arange(len(texts)), "c": np.array([e.label for e in events])},
                      {"f": np.repeat(domain, k), "c": np.tile(np.arange(k), domain.size),
                       "v": np.zeros(domain.size * k), "decay": np.full(domain.size * k, 3e-5)})
    weights, seconds = [], {}
    for engine in (DuckDBEngine(), SparkEngine(master)):
        start = time.perf_counter()
        trainer = RelationalTrainer(engine, problem, TrainSpec(epochs=1, batch_size=8))
        result = trainer.train(track_loss=False)
        seconds[engine.name] = time.perf_counter() - start
        weights.append(result.weights)
        engine.close()
    diff = max(float(np.abs(weights[0][c] - weights[1][c]).max()) for c in ("v", "g2"))
    return {"steps": steps, "events": len(texts), "weights": len(weights[0]["v"]),
            "max_abs_diff": diff, "seconds": seconds, "master": master}


def _split(dataset: Path, name: str) -> tuple[list[Any], list[Any]]:
    rows = read_stream(dataset)
    if name == "imdb":  # sorted by label: shuffled as `replay --shuffle --seed 0` does
        random.Random(0).shuffle(rows)
    half = len(rows) // 2
    return rows[:half], rows[half:]


def _halve(events: list[LabelledEvent], first: set[str]) -> list[LabelledEvent]:
    return [e for e in events if e.id in first]


def heldout(task: Task, train: list[Any], test: list[Any], stage: Any) -> dict[str, Any]:
    """Held-out accuracy of ``stage`` (trained relationally), of SGDClassifier on the same
    features, and of one online pass of a fresh stage."""
    from scipy import sparse
    from sklearn.linear_model import SGDClassifier

    def matrix(texts: list[str]) -> Any:
        x = features.feature_relation(stage, texts)
        keep = x["f"] != features.BIAS
        return sparse.csr_matrix((x["v"][keep], (x["e"][keep], x["f"][keep])),
                                 shape=(len(texts), stage.n_features))

    texts, targets = [r.text for r in train], np.array([task.labels.index(r.label) for r in train])
    test_texts = [r.text for r in test]
    truth = np.array([task.labels.index(r.label) for r in test])
    sgd = [float((SGDClassifier(loss="log_loss", random_state=s).fit(matrix(texts), targets)
                  .predict(matrix(test_texts)) == truth).mean()) for s in range(3)]
    online = new_stage(task, {})
    for lo in range(0, len(texts), 1):
        online.learn(texts[lo:lo + 1], targets[lo:lo + 1].tolist())
    return {"relational": float((stage.predict_proba(test_texts).argmax(axis=1) == truth).mean()),
            "sgd": sgd[0], "sgd_seeds": sgd,
            "online_pass": float((online.predict_proba(test_texts).argmax(axis=1)
                                  == truth).mean())}


def _echo_tagged(tag: str) -> Callable[[str], None]:
    """A progress callback that prints each line to stderr behind ``tag``."""
    def echo(line: str) -> None:
        click.echo(f"{tag}: {line}", err=True)

    return echo


def stream_value(dataset: Path, name: str, llm_name: str, options: TrainOptions,
                 progress: bool) -> dict[str, Any]:
    task = TASKS[name]
    first, second = _split(dataset, name)
    first_ids = {r.id for r in first}
    out: dict[str, Any] = {"train_events": len(first), "replay_events": len(second)}
    states: dict[str, bytes] = {}
    for label, source in (("warm", "ground_truth"), ("warm_llm_labels", f"llm:{llm_name}")):
        history = read_history(dataset, task, source)
        events = _halve(history.events, first_ids)
        engine = DuckDBEngine()
        try:
            cascade, figures = train_from_history(
                engine, task, events, options,
                progress=_echo_tagged(f"{name} {label}") if progress else None)
        finally:
            engine.close()
        states[label] = cascade.state_bytes()
        out[f"training_{label}"] = figures
        if label == "warm":
            out["heldout"] = heldout(task, first, second, cascade.stages[0])
    llm = make_llm(task, recorded=llm_name, records_path=dataset)
    truth = rp.truth_of(second, task)
    alone = rp.llm_alone(second, llm)
    for label in ("cold", "warm", "warm_llm_labels"):
        cascade = build_cascade(task, llm, CascadeConfig())
        if label in states:
            cascade.load_state(states[label])
        result = rp.replay(second, task, cascade, feedback="llm",
                           progress=f"{name} {label}" if progress else False)
        rp.add_llm_alone(result, task, alone, truth)
        out[label] = {k: result[k] for k in ("llm_fraction", "llm_call_fraction",
                                             "quality_vs_llm", "quality", "llm_quality",
                                             "metric", "seconds")}
    out["warm_over_cold_llm_fraction"] = (out["warm"]["llm_fraction"]
                                          / max(out["cold"]["llm_fraction"], 1e-12))
    return out


def run_bench(data_dir: Path, streams: tuple[str, ...], llm_name: str, master: str,
              options: TrainOptions, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    checks = {name: gradient_checks(data_dir / f"{name}.jsonl.gz", TASKS[name], seed=i)
              for i, name in enumerate(streams)}
    grad_max = max(v for c in checks.values() for m in c.values()
                   for key, v in m.items() if key != "n_weights")
    try:
        parity = engine_parity(data_dir / f"{streams[0]}.jsonl.gz", TASKS[streams[0]], master)
    except Exception as exc:  # Spark's failures arrive as many types; the rest still runs
        parity = {"max_abs_diff": None, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    values = {name: stream_value(data_dir / f"{name}.jsonl.gz", name, llm_name, options, progress)
              for name in streams}
    return {
        "grad_rel_error_max": grad_max, "gradient_checks": checks,
        "duckdb_vs_spark_max_abs_diff": parity["max_abs_diff"], "engine_parity": parity,
        "heldout_accuracy": {n: v["heldout"]["relational"] for n, v in values.items()},
        "sgd_heldout_accuracy": {n: v["heldout"]["sgd"] for n, v in values.items()},
        "online_heldout_accuracy": {n: v["heldout"]["online_pass"] for n, v in values.items()},
        "streams": {n: {k: v[k] for k in ("cold", "warm", "warm_llm_labels",
                                          "warm_over_cold_llm_fraction")}
                    for n, v in values.items()},
        "details": values, "llm": llm_name, "options": {
            "epochs": options.epochs, "batch_size": options.batch_size, "l2": options.l2,
            "policy_epochs": options.policy_epochs, "folds": options.folds},
        "machine": platform.platform(), "seconds": time.perf_counter() - start,
    }


@click.command("train")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("../shared/datasets"), show_default=True,
              help="Where the shared streams are (<name>.jsonl.gz).")
@click.option("--streams", default=",".join(STREAMS), show_default=True)
@click.option("--llm", "llm_name", default="gpt-3.5-turbo-1106", show_default=True,
              help="The recorded LLM: the cascade's last stage and the llm label source.")
@click.option("--master", default="local[2]", show_default=True, help="Spark's master URL.")
@click.option("--epochs", type=click.IntRange(1), default=TrainOptions.epochs, show_default=True)
@click.option("--scale", "scale_sizes", help="Instead: epoch time and peak memory at these "
              "numbers of events (comma-separated, e.g. 1e5,1e6), on DuckDB and Spark.")
@click.option("--scale-engines", default=",".join(SCALE_ENGINES), show_default=True,
              help="With --scale: the engines measured.")
@click.option("--scale-stream", type=click.Choice(STREAMS), default="hatespeech",
              show_default=True, help="With --scale: the stream repeated.")
@click.option("--scale-steps", type=click.IntRange(1), help="With --scale: time only an epoch's "
              "first N steps and scale them to the epoch (for sizes too slow to wait for).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="With --scale: a PNG of epoch time against events.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              required=True)
def command(data_dir: Path, streams: str, llm_name: str, master: str, epochs: int,
            scale_sizes: str | None, scale_engines: str, scale_stream: str,
            scale_steps: int | None, plot_out: Path | None, quiet: bool, json_out: Path) -> None:
    """Gradient checks, engine parity, held-out accuracy and warm-vs-cold replays."""
    names = tuple(s.strip() for s in streams.split(",") if s.strip())
    unknown = set(names) - set(STREAMS)
    if unknown:
        raise click.BadParameter(f"unknown streams {sorted(unknown)}", param_hint="--streams")
    try:
        if scale_sizes:
            from streamcascade.models.relational.scale import scale_bench

            sizes = [int(float(s)) for s in scale_sizes.split(",") if s.strip()]
            result = scale_bench(data_dir / f"{scale_stream}.jsonl.gz", TASKS[scale_stream],
                                 sizes, plot_out, tuple(scale_engines.split(",")),
                                 max_steps=scale_steps)
        else:
            result = run_bench(data_dir, names, llm_name, master, TrainOptions(epochs=epochs),
                               not quiet)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    keys = ("grad_rel_error_max", "duckdb_vs_spark_max_abs_diff", "heldout_accuracy",
            "sgd_heldout_accuracy", "streams")
    click.echo(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
