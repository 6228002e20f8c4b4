"""``streamcascade bench river``: the first stage against River's own text pipeline, same run.

The first stage (:class:`~streamcascade.models.stages.river_text.RiverTextStage`) is River's kind
of model written over numpy arrays. This benchmark is why: on the same events, in the same
process, it runs River's ``TFIDF(ngram_range=(1, 2)) | LogisticRegression`` (``SoftmaxRegression``
for more than two labels) and the stage, each predicting then learning one event at a time
(progressive validation against the ground-truth label), and reports events/s and accuracy of
both. ``stage_vs_river`` is the stage's events/s over River's.
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
from streamcascade.models.stages.river_text import RiverTextStage
from streamcascade.models.tasks import TASKS, Task


def _river_pipeline(task: Task) -> Any:
    from river import compose, feature_extraction, linear_model

    head = (linear_model.LogisticRegression() if len(task.labels) == 2
            else linear_model.SoftmaxRegression())
    return compose.Pipeline(feature_extraction.TFIDF(ngram_range=(1, 2)), head)


def _progressive(
    name: str, predict_learn: Any, texts: list[str], targets: list[int]
) -> dict[str, Any]:
    correct = 0
    start = time.perf_counter()
    for text, target in tqdm(zip(texts, targets, strict=True), total=len(texts), desc=name,
                             unit="ev", leave=False):
        correct += int(predict_learn(text, target) == target)
    seconds = time.perf_counter() - start
    return {"events_per_s": len(texts) / seconds, "seconds": seconds,
            "progressive_accuracy": correct / len(texts)}


def run_bench(dataset: Path, task: Task, limit: int, seed: int) -> dict[str, Any]:
    rows = list(read_stream(dataset))
    random.Random(seed).shuffle(rows)  # the shared IMDB stream is sorted by label
    rows = rows[:limit]
    if any(r.label is None for r in rows):
        raise click.ClickException(f"{dataset} has rows without a label; the benchmark scores them")
    texts = [r.text for r in rows]
    targets = [task.labels.index(str(r.label)) for r in rows]

    pipeline = _river_pipeline(task)

    def river_step(text: str, target: int) -> int:
        proba = pipeline.predict_proba_one(text)
        guess = max(proba, key=proba.get) if proba else 0
        pipeline.learn_one(text, target if len(task.labels) > 2 else bool(target))
        return int(guess)

    stage = RiverTextStage(task.labels)

    def stage_step(text: str, target: int) -> int:
        guess = int(stage.predict_proba([text])[0].argmax())
        stage.learn([text], [target])
        return guess

    river = _progressive("river TFIDF+linear", river_step, texts, targets)
    ours = _progressive("RiverTextStage", stage_step, texts, targets)
    return {
        "dataset": str(dataset), "task": task.name, "n": len(texts), "seed": seed,
        "mean_chars": sum(map(len, texts)) / len(texts), "machine": platform.platform(),
        "river_pipeline": "TFIDF(ngram_range=(1, 2)) | "
        + ("LogisticRegression" if len(task.labels) == 2 else "SoftmaxRegression"),
        "river": river, "stage": ours,
        "stage_vs_river": ours["events_per_s"] / river["events_per_s"],
    }


@click.command("river")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("../shared/datasets/imdb.jsonl.gz"), show_default=True,
              help="A stream in the shared format.")
@click.option("--task", "task_name", type=click.Choice(["auto", *sorted(TASKS)]), default="auto",
              show_default=True, help="The task; auto: from the dataset's file name.")
@click.option("--limit", type=int, default=2000, show_default=True, help="Events to run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle seed.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Write the results here (JSON).")
def command(dataset: Path, task_name: str, limit: int, seed: int, json_out: Path) -> None:
    """Events/s and accuracy of the first stage against River's own pipeline, same events."""
    name = stream_task_name(dataset) if task_name == "auto" else task_name
    if name not in TASKS:
        raise click.BadParameter(f"no built-in task is named after {dataset.name}; pass --task "
                                 f"({', '.join(sorted(TASKS))})", param_hint="--task")
    try:
        result = run_bench(dataset, TASKS[name], limit, seed)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    click.echo(json.dumps({k: result[k] for k in ("n", "stage_vs_river")}
                          | {"river": result["river"], "stage": result["stage"]}, indent=2))
