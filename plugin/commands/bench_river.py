"""``streamcascade bench river``: the ``hashed`` stage against the ``river`` stage, same events.

Both stages are built by the stage registry, as a cascade builds them, and run on the same
shuffled events in the same process: each batch (``--batch-size``, one event by default, River's
progressive validation) is answered, then learned with its ground-truth labels. The report gives
each stage's progressive accuracy, the task's own metric over the same answers (F1 of the positive
label on skewed tasks), events/s and seconds; ``hashed_vs_river`` is the hashed stage's events/s
over the river stage's.
"""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from streamcascade.errors import StreamcascadeError
from streamcascade.models.datasets import read_stream, stream_task_name
from streamcascade.models.metrics import accuracy, task_metric
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.stages.river_stage import DEFAULT_MODEL
from streamcascade.models.tasks import TASKS, Task


def _progressive(stage: Stage, task: Task, texts: list[str], targets: list[int],
                 batch_size: int) -> dict[str, Any]:
    """Answer each batch, then learn it; score the answers given before learning."""
    guesses: list[int | None] = []
    start = time.perf_counter()
    with tqdm(total=len(texts), desc=stage.name, unit="ev", leave=False) as bar:
        for lo in range(0, len(texts), batch_size):
            batch, labels = texts[lo:lo + batch_size], targets[lo:lo + batch_size]
            guesses += [int(g) for g in stage.predict_proba(batch).argmax(axis=1)]
            stage.learn(batch, labels)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    positive = task.labels.index(task.positive_label) if task.positive_label else None
    return {"events_per_s": len(texts) / seconds, "seconds": seconds,
            "progressive_accuracy": accuracy(guesses, targets),
            "progressive_metric": task_metric(task.metric, guesses, targets, positive),
            "metric": task.metric}


def run_bench(dataset: Path, task: Task, limit: int, seed: int, river_model: str,
              batch_size: int) -> dict[str, Any]:
    rows = list(read_stream(dataset))
    random.Random(seed).shuffle(rows)  # the shared IMDB stream is sorted by label
    rows = rows[:limit]
    if not rows:
        raise click.ClickException(f"{dataset} has no events")
    if any(r.label is None for r in rows):
        raise click.ClickException(f"{dataset} has rows without a label; the benchmark scores them")
    texts = [r.text for r in rows]
    targets = [task.labels.index(str(r.label)) for r in rows]

    river = make_stage("river", task, model=river_model)
    hashed = make_stage("hashed", task)
    results = {stage.name: _progressive(stage, task, texts, targets, batch_size)
               for stage in (river, hashed)}
    return {
        "dataset": str(dataset), "task": task.name, "n": len(texts), "seed": seed,
        "batch_size": batch_size, "mean_chars": sum(map(len, texts)) / len(texts),
        "machine": platform.platform(), "river_model": getattr(river, "spec", river_model),
        **results,
        "hashed_vs_river": results["hashed"]["events_per_s"] / results["river"]["events_per_s"],
    }


@click.command("river")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="A labelled stream in the shared format (.jsonl or .jsonl.gz).")
@click.option("--task", "task_name", type=click.Choice(["auto", *sorted(TASKS)]), default="auto",
              show_default=True, help="The task; auto: from the dataset's file name.")
@click.option("--limit", type=int, default=2000, show_default=True, help="Events to run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle seed.")
@click.option("--river-model", default=DEFAULT_MODEL, show_default=True,
              help="The river stage's estimator spec, e.g. "
                   "'feature_extraction.TFIDF | naive_bayes.ComplementNB'.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Events answered, then learned, together.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Write the results here (JSON).")
def command(dataset: Path, task_name: str, limit: int, seed: int, river_model: str,
            batch_size: int, json_out: Path) -> None:
    """Quality and events/s of the hashed and river stages, on the same events."""
    name = stream_task_name(dataset) if task_name == "auto" else task_name
    if name not in TASKS:
        raise click.BadParameter(f"no built-in task is named after {dataset.name}; pass --task "
                                 f"({', '.join(sorted(TASKS))})", param_hint="--task")
    try:
        result = run_bench(dataset, TASKS[name], limit, seed, river_model, batch_size)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    click.echo(json.dumps({k: result[k] for k in ("n", "river_model", "hashed", "river",
                                                  "hashed_vs_river")}, indent=2))
