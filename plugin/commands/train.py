"""``streamcascade train``: the first stage and its deferral policy, trained from a history of
labelled events on a relational engine, written as a cascade state that a replay
(``replay --warm-start``) or a worker starts from.

The models are relational computations whose gradients are derived as SQL
(:mod:`streamcascade.models.relational`); DuckDB runs them in process, Spark (``--engine spark``,
``--master local[n]`` or a cluster's URL) where one machine is not enough. Rows that cannot teach
(no text, no label, an unknown label, a repeated id) are counted in the report, not guessed.

The history is a file (``--input``) or the deployment's own topics (``--from-kafka``: its input
and feedback topics, each partition up to the end it had when the run began, joined by event id;
see :mod:`streamcascade.operators.topic_history`). The result is a state file (``--out``) and, with
``--publish``, the fleet's next signed version on its state topic
(:mod:`streamcascade.operators.state_release`), which carries the trained (event, source) keys as
the learner's seen-set so that the online learner does not learn them again. Nothing is written
or published before training has finished: a run stopped half-way leaves the file and the
published version as they were.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from streamcascade.errors import ConfigurationError, StreamcascadeError
from streamcascade.models.cascade import Cascade, CascadeConfig
from streamcascade.models.relational.engines import ENGINES, open_engine
from streamcascade.models.relational.history import History, read_history
from streamcascade.models.relational.pipeline import TrainOptions, train_from_history
from streamcascade.models.relational.publish import state_with_training, write_atomic
from streamcascade.models.tasks import TASKS, Task, generic_task
from streamcascade.models.types import SOURCE_GROUND_TRUTH, SOURCE_LLM, LabelSet
from streamcascade.operators.demo_dedup import DEFAULT_CAPACITY
from streamcascade.operators.learning_guard import SEEN_META_KEY
from streamcascade.operators.state_release import release_state, seen_set
from streamcascade.operators.state_store import StateSigner
from streamcascade.operators.topic_history import TopicHistory, read_topic_history
from streamcascade.settings import Settings

Progress = Callable[[str], None]
#: What the signed state's header says of its training (the state's own metadata has it all).
PUBLISHED_TRAINING_KEYS = ("engine", "rows", "loss", "offsets", "input", "topics",
                           "label_source", "skipped", "trained_at", "seen_ids")


def _worker_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    """``--config``: a worker's TOML file; the keys of its ``[worker]`` table that are options of
    this command (the cluster, the topics, the field names, the task, the stage options) become
    their defaults, so that training reads and publishes what that worker does."""
    if value is None:
        return
    try:
        table = tomllib.loads(value.read_text(encoding="utf-8")).get("worker", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read config file {value}: {exc}") from None
    if not isinstance(table, dict):
        raise click.BadParameter(f"{value}: [worker] is not a table")
    names = {p.name for p in ctx.command.params if p.name and p.expose_value}
    ctx.default_map = {**(ctx.default_map or {}),
                       **{key: item for key, item in table.items() if key in names}}


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


def train_history(history: History, task: Task, source: dict[str, Any], *,
                  skipped: dict[str, int], label_source: str = "ground_truth",
                  engine: str = "duckdb", master: str = "local[2]",
                  options: TrainOptions | None = None,
                  progress: Progress | None = None) -> tuple[Cascade, dict[str, Any]]:
    """Train on ``history``'s events: the warm cascade and the report (``source`` says where the
    history came from; ``skipped``: its rows left out, by reason)."""
    options = options or TrainOptions()
    if not history.events:
        raise ConfigurationError(f"{source.get('input')}: no row can teach (read {history.read}, "
                                 f"skipped {skipped})")
    started = time.time()
    runner = open_engine(engine, master=master)
    try:
        cascade, figures = train_from_history(runner, task, history.events, options, skipped,
                                              progress)
    finally:
        runner.close()
    training: dict[str, Any] = {
        **source, "task": task.name, "label_source": label_source,
        "master": master if engine == "spark" else None, "rows_read": history.read,
        **figures, "seed": options.seed, "stage_options": options.stage_options,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    return cascade, training


def train_file(path: Path, task: Task, *, label_source: str = "ground_truth",
               engine: str = "duckdb", master: str = "local[2]",
               options: TrainOptions | None = None, limit: int | None = None,
               progress: Progress | None = None) -> tuple[bytes, dict[str, Any]]:
    """Train from the history in ``path``: the warm cascade's state bytes and the report."""
    history = read_history(path, task, label_source, limit)
    cascade, training = train_history(history, task, {"input": str(path)},
                                      skipped=history.skip_counts(), label_source=label_source,
                                      engine=engine, master=master, options=options,
                                      progress=progress)
    return state_with_training(cascade, training), training


def read_deployment_history(settings: Settings, task: Task, label_source: str,
                            timeout: float = 30.0) -> TopicHistory:
    """The labelled events of the deployment's input and feedback topics (the settings')."""
    if not settings.feedback_topic:
        raise ConfigurationError("reading history from Kafka needs the feedback topic "
                                 "(--feedback-topic or STREAMCASCADE_FEEDBACK_TOPIC)")
    return read_topic_history(bootstrap_of(settings), settings.input_topic,
                              settings.feedback_topic, settings.record_codec(), task,
                              label_source, timeout)


def train_topics(settings: Settings, task: Task, *, label_source: str = "ground_truth",
                 engine: str = "duckdb", master: str = "local[2]",
                 options: TrainOptions | None = None, timeout: float = 30.0,
                 progress: Progress | None = None
                 ) -> tuple[Cascade, dict[str, Any], TopicHistory]:
    """Train from the deployment's topics: the warm cascade, the report and the history read."""
    topic_history = read_deployment_history(settings, task, label_source, timeout)
    if progress:
        progress(f"read {topic_history.history.read} feedback records: "
                 f"{len(topic_history.history.events)} labelled events")
    source = {"input": f"kafka://{bootstrap_of(settings)}",
              "topics": {"input": settings.input_topic, "feedback": settings.feedback_topic},
              "offsets": topic_history.offsets.as_json()}
    cascade, training = train_history(
        topic_history.history, task, source, skipped=topic_history.skip_counts(),
        label_source=label_source, engine=engine, master=master, options=options,
        progress=progress)
    return cascade, training, topic_history


def bootstrap_of(settings: Settings) -> str:
    if not settings.bootstrap:
        raise ConfigurationError("no Kafka cluster: pass --bootstrap or set "
                                 "STREAMCASCADE_BOOTSTRAP")
    return settings.bootstrap


def signer_of(settings: Settings) -> StateSigner:
    """The fleet's signer; a clear error where publishing cannot work (checked before training:
    a long run must not end in a missing setting)."""
    if not settings.state_topic:
        raise ConfigurationError("--publish needs the deployment's state topic (--state-topic "
                                 "or STREAMCASCADE_STATE_TOPIC)")
    if settings.state_signing_key is None:
        raise ConfigurationError("--publish needs the fleet's signing key: set "
                                 "STREAMCASCADE_STATE_SIGNING_KEY as the workers have it")
    return StateSigner(settings.state_signing_key)


def publish_trained(settings: Settings, signer: StateSigner, cascade: Cascade,
                    training: dict[str, Any], seen: str, timeout: float = 30.0) -> int:
    """Publish the trained ``cascade`` as the fleet's next version, with ``seen`` (the trained
    demonstrations' keys) as its seen-set; returns the version."""

    def build(version: int) -> tuple[bytes, dict[str, Any]]:
        cascade.version = version  # (what a worker serving it reports, and counts on from)
        meta = {"task": cascade.task.name, "stages": cascade.stage_names[:-1], SEEN_META_KEY: seen,
                "training": {k: training[k] for k in PUBLISHED_TRAINING_KEYS if k in training}}
        return state_with_training(cascade, training), meta

    return release_state(bootstrap_of(settings), settings.operator_topics(), signer, build,
                         timeout)


@click.command("train")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              callback=_worker_config, is_eager=True, expose_value=False,
              help="A worker's TOML config file: its [worker] bootstrap, topics, field names, "
                   "task and stage options are this command's defaults (flags win).")
@click.option("--input", "input_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled events: JSON Lines (.jsonl, .jsonl.gz) or Parquet, in the shared "
                   "stream format (id, text, label, llm). Or --from-kafka.")
@click.option("--from-kafka", "from_kafka", is_flag=True,
              help="Read the history from the deployment's topics instead: its feedback topic "
                   "and its input topic (for the texts), each partition from its start up to "
                   "the end it has when the run begins, joined by event id. The offsets are in "
                   "the report and the state's training metadata.")
@click.option("--bootstrap", help="Kafka bootstrap servers, for --from-kafka and --publish "
                                  "(default: $STREAMCASCADE_BOOTSTRAP).")
@click.option("--input-topic", "input_topic",
              help="The deployment's input topic (default: $STREAMCASCADE_INPUT_TOPIC, events).")
@click.option("--feedback-topic", "feedback_topic",
              help="Its feedback topic (default: $STREAMCASCADE_FEEDBACK_TOPIC, feedback).")
@click.option("--state-topic", "state_topic",
              help="Its model-state topic, for --publish (default: "
                   "$STREAMCASCADE_STATE_TOPIC, model-state).")
@click.option("--id-field", "id_field", help="Field of the event id in its records.")
@click.option("--text-field", "text_field", help="Field of the text in its input records.")
@click.option("--kafka-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True,
              help="Seconds to wait for the cluster (a cluster that does not answer is an error).")
@click.option("--task", "task_name", required=True,
              help=f"A built-in task ({', '.join(sorted(TASKS))}) or a name with --labels.")
@click.option("--labels", help="Comma-separated labels of a task that is not built in.")
@click.option("--label-source", default="ground_truth", show_default=True,
              help="Which label teaches: ground_truth, or llm:<name> (a recorded LLM's answers "
                   "in a file). From Kafka: ground_truth, or llm (the answers the deployment's "
                   "LLM wrote to the feedback topic, audits included).")
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
@click.option("--limit", type=click.IntRange(1), help="Read only the first N rows (of --input).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="The state file to write (replaced only when training has finished), for "
                   "replay --warm-start.")
@click.option("--publish", is_flag=True,
              help="Publish the trained state on the deployment's state topic as the fleet's "
                   "next version, signed with $STREAMCASCADE_STATE_SIGNING_KEY (the workers' "
                   "key), once training has finished: new workers start from it. Its metadata "
                   "holds the trained (event id, source) keys as the learner's seen-set, so "
                   "the online learner does not learn those demonstrations again. The "
                   "workers load it only if they build the same stage: give their "
                   "--stage-option values, or their --config.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the training report here (JSON).")
def train(input_path: Path | None, from_kafka: bool, kafka_timeout: float, task_name: str,
          labels: str | None, label_source: str, engine: str, master: str, epochs: int,
          batch_size: int, learning_rate: float | None, l2: float, policy_epochs: int,
          folds: int, stage_option: tuple[str, ...], limit: int | None, seed: int,
          out: Path | None, publish: bool, json_out: Path | None, **flags: Any) -> None:
    """Train the first stage and its deferral policy from labelled history (a file, or the
    deployment's topics); write a state file, publish it to the fleet, or both.

    With --publish the state becomes the version after the newest one on the deployment's state
    topic: workers that start afterwards serve it, and so do running ones whose model has not
    moved past that version. The (event id, source) keys it was trained on travel in it as the
    learner's seen-set, so when the deployment reads those demonstrations (again) the online
    learner drops them as repeats. Nothing is written or published before training has
    finished; a cluster that does not answer within --kafka-timeout is an error.
    """
    from streamcascade.commands.worker import build_settings, parse_stage_options


    def progress(line: str) -> None:
        click.echo(line, err=True)

    try:
        if (input_path is None) == (not from_kafka):
            raise ConfigurationError("give the history: --input FILE or --from-kafka")
        if out is None and not publish:
            raise ConfigurationError("say where the state goes: --out FILE, --publish, or both")
        if from_kafka and limit is not None:
            raise ConfigurationError("--limit reads part of a file; from Kafka the whole "
                                     "recorded range is read")
        settings = build_settings(**flags)
        signer = signer_of(settings) if publish else None
        if publish and not from_kafka:  # (a cluster that does not answer: before training)
            from streamcascade.operators.topics import partition_counts

            partition_counts(bootstrap_of(settings), kafka_timeout)
        stage_options = parse_stage_options(stage_option)
        unknown = set(stage_options) - {"hashed"}
        if unknown:
            raise ConfigurationError(f"training builds the hashed stage; options were given for "
                                     f"{sorted(unknown)}")
        options = TrainOptions(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                               l2=l2, policy_epochs=policy_epochs, folds=folds, seed=seed,
                               stage_options=stage_options.get("hashed", {}),
                               config=CascadeConfig(seed=seed))
        task = task_of(task_name, labels)
        if input_path is not None:
            history = read_history(input_path, task, label_source, limit)
            cascade, report = train_history(
                history, task, {"input": str(input_path)}, skipped=history.skip_counts(),
                label_source=label_source, engine=engine, master=master, options=options,
                progress=progress)
            source = SOURCE_GROUND_TRUTH if label_source == SOURCE_GROUND_TRUTH else SOURCE_LLM
            trained_sources = [source] * len(history.events)
        else:
            cascade, report, topic_history = train_topics(
                settings, task, label_source=label_source, engine=engine, master=master,
                options=options, timeout=kafka_timeout, progress=progress)
            history, trained_sources = topic_history.history, topic_history.sources
        data = state_with_training(cascade, report)
        if out is not None:
            write_atomic(out, data)
            report |= {"out": str(out), "state_bytes": len(data)}
        if signer is not None:
            seen = seen_set(history.events, trained_sources)
            report["seen_ids"] = min(len(history.events), DEFAULT_CAPACITY)
            version = publish_trained(settings, signer, cascade, report, seen, kafka_timeout)
            report["published"] = {"topic": settings.state_topic, "version": version}
    except (StreamcascadeError, ValidationError) as exc:
        raise click.ClickException(str(exc)) from None
    if json_out is not None:
        write_atomic(json_out, json.dumps(report, indent=2).encode())
    skipped = sum(report["skipped"].values())
    where = [str(out)] if out is not None else []
    if "published" in report:
        where.append(f"version {report['published']['version']} on "
                     f"{report['published']['topic']}")
    click.echo(f"{report['rows']} events trained on {engine} ({skipped} rows skipped), "
               f"loss {report['loss']:.4f}, {report['seconds']:.1f}s -> {', '.join(where)}")
