"""``streamcascade train``: the first stage and its deferral policy, trained from a history of
labelled events on a relational engine, written as a cascade state that a replay
(``replay --warm-start``) or a worker starts from.

The models are relational computations whose gradients are derived as SQL
(:mod:`streamcascade.models.relational`); DuckDB runs them in process, Spark (``--engine spark``,
``--master local[n]`` or a cluster's URL) where one machine is not enough. Rows that cannot teach
(no text, no label, an unknown label, a repeated id) are counted in the report, not guessed. The
state file is replaced only when training has finished: a run stopped half-way leaves it as it
was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from streamcascade.errors import ConfigurationError, StreamcascadeError
from streamcascade.models.cascade import CascadeConfig
from streamcascade.models.relational.engines import ENGINES, open_engine
from streamcascade.models.relational.history import read_history
from streamcascade.models.relational.pipeline import TrainOptions, train_from_history
from streamcascade.models.relational.publish import state_with_training, write_atomic
from streamcascade.models.tasks import TASKS, Task, generic_task
from streamcascade.models.types import LabelSet


def task_of(name: str, labels: str | None) -> Task:
    """A built-in task, or a generic one over ``labels`` (comma-separated)."""
    if name in TASKS:
        return TASKS[name]
    if not labels:
        raise ConfigurationError(f"{name!r} is not a built-in task ({', '.join(sorted(TASKS))}); "
                                 f"give its labels with --labels")
    try:
        return generic_task(name, LabelSet.of(n.strip() for n in labels.split(",") if n.strip()))
    except ValueError as exc:
        raise ConfigurationError(f"--labels: {exc}") from None


def train_file(path: Path, task: Task, *, label_source: str = "ground_truth",
               engine: str = "duckdb", master: str = "local[2]",
               options: TrainOptions | None = None, limit: int | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[bytes, dict[str, Any]]:
    """Train from the history in ``path``: the warm cascade's state bytes and the report."""
    options = options or TrainOptions()
    history = read_history(path, task, label_source, limit)
    if not history.events:
        raise ConfigurationError(f"{path}: no row can teach (read {history.read}, skipped "
                                 f"{history.skip_counts()})")
    started = time.time()
    runner = open_engine(engine, master=master)
    try:
        cascade, figures = train_from_history(runner, task, history.events, options,
                                              history.skip_counts(), progress)
    finally:
        runner.close()
    training: dict[str, Any] = {
        "input": str(path), "task": task.name, "label_source": label_source,
        "master": master if engine == "spark" else None, "rows_read": history.read,
        **figures, "seed": options.seed, "stage_options": options.stage_options,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    return state_with_training(cascade, training), training


@click.command("train")
@click.option("--input", "input_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled events: JSON Lines (.jsonl, .jsonl.gz) or Parquet, in the shared "
                   "stream format (id, text, label, llm).")
@click.option("--task", "task_name", required=True,
              help=f"A built-in task ({', '.join(sorted(TASKS))}) or a name with --labels.")
@click.option("--labels", help="Comma-separated labels of a task that is not built in.")
@click.option("--label-source", default="ground_truth", show_default=True,
              help="Which label teaches: ground_truth, or llm:<name> (a recorded LLM's answers).")
@click.option("--engine", type=click.Choice(ENGINES), default="duckdb", show_default=True)
@click.option("--master", default="local[2]", show_default=True,
              help="Spark's master URL (--engine spark): local[n] or a cluster's.")
@click.option("--epochs", type=click.IntRange(1), default=TrainOptions.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=TrainOptions.batch_size,
              show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True),
              help="AdaGrad's step for the stage (default: the stage's own).")
@click.option("--l2", type=click.FloatRange(min=0), default=TrainOptions.l2, show_default=True,
              help="L2 penalty on the stage's weights touched by each batch.")
@click.option("--policy-epochs", type=click.IntRange(1), default=TrainOptions.policy_epochs,
              show_default=True)
@click.option("--folds", type=click.IntRange(2), default=TrainOptions.folds, show_default=True,
              help="Folds for the stage answers the policy learns from (each from a stage that "
                   "did not learn the event).")
@click.option("--stage-option", "stage_option", multiple=True, metavar="hashed.KEY=VALUE",
              help="An option of the hashed stage, as replay and worker take it (repeatable).")
@click.option("--limit", type=click.IntRange(1), help="Read only the first N rows.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The state file to write (replaced only when training has finished).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the training report here (JSON).")
def train(input_path: Path, task_name: str, labels: str | None, label_source: str, engine: str,
          master: str, epochs: int, batch_size: int, learning_rate: float | None, l2: float,
          policy_epochs: int, folds: int, stage_option: tuple[str, ...], limit: int | None,
          seed: int, out: Path, json_out: Path | None) -> None:
    """Train the first stage and its deferral policy from labelled history; write a state."""
    from streamcascade.commands.worker import parse_stage_options

    try:
        stage_options = parse_stage_options(stage_option)
        unknown = set(stage_options) - {"hashed"}
        if unknown:
            raise ConfigurationError(f"training builds the hashed stage; options were given for "
                                     f"{sorted(unknown)}")
        options = TrainOptions(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                               l2=l2, policy_epochs=policy_epochs, folds=folds, seed=seed,
                               stage_options=stage_options.get("hashed", {}),
                               config=CascadeConfig(seed=seed))
        data, report = train_file(input_path, task_of(task_name, labels),
                                  label_source=label_source, engine=engine, master=master,
                                  options=options, limit=limit,
                                  progress=lambda line: click.echo(line, err=True))
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    write_atomic(out, data)
    report |= {"out": str(out), "state_bytes": len(data)}
    if json_out is not None:
        write_atomic(json_out, json.dumps(report, indent=2).encode())
    skipped = sum(report["skipped"].values())
    click.echo(f"{report['rows']} events trained on {engine} ({skipped} rows skipped), "
               f"loss {report['loss']:.4f}, {report['seconds']:.1f}s -> {out}")
