"""``streamcascade worker`` (the operator as a service) and ``streamcascade demo`` (the main job).

Every worker flag may also come from a TOML config file (``--config worker.toml``), whose
``[worker]`` table uses the options' parameter names (``bootstrap``, ``input_topic``,
``output_topic``, ``feedback_topic``, ``dlq_topic``, ``state_topic``, ``task_name``, ``stages``,
``llm``, ``llm_records``, ``batch_size``, ...) and whose ``[cascade]`` table holds any
:class:`~streamcascade.models.cascade.CascadeConfig` field. Flags win over the file, the file
over ``STREAMCASCADE_*`` environment variables, and those over the defaults.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from streamcascade.errors import ConfigurationError, StreamcascadeError
from streamcascade.models.llm.base import LLM_FAILURE_MODES
from streamcascade.settings import Settings

if TYPE_CHECKING:
    from streamcascade.models.cascade import Cascade
    from streamcascade.models.tasks import Task

log = logging.getLogger(__name__)

#: ``--loglevel``'s choices as :mod:`logging` levels.
_LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
               "info": logging.INFO, "debug": logging.DEBUG}

#: Worker flags that are Settings fields (flag value None: take the setting).
_SETTING_FLAGS = (
    "bootstrap", "app_id", "input_topic", "output_topic", "feedback_topic", "dlq_topic",
    "state_topic", "id_field", "text_field", "batch_size", "batch_time_s", "max_payload_bytes",
    "decision_ttl_s", "learn_batch_size", "learn_batch_time_s", "publish_interval_s",
    "metrics_port", "fetch_max_wait_ms", "freeze_heap", "create_topics", "wait_for_input",
    "summary_interval_s", "llm_concurrency", "llm_timeout_s", "llm_deadline_s", "llm_hedge",
    "on_llm_failure",
)  # fmt: skip


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Read ``--config`` before the other options, as their defaults."""
    if value is None:
        return None
    try:
        data = tomllib.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read config file {value}: {exc}") from None
    unknown_tables = set(data) - {"worker", "cascade"}
    if unknown_tables:
        raise click.BadParameter(f"{value}: unknown tables {sorted(unknown_tables)}; the file "
                                 "has [worker] and [cascade]")
    defaults = dict(data.get("worker", {}))
    # A misspelt key would silently leave its option at the default (say, the default topics).
    names = {p.name for p in ctx.command.params if p.name and p.expose_value}
    unknown = set(defaults) - names
    if unknown:
        raise click.BadParameter(f"{value}: unknown [worker] keys {sorted(unknown)}; the keys "
                                 f"are the options' parameter names: {sorted(names)}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["cascade_overrides"] = data.get("cascade", {})
    return value


def build_settings(**flags: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {k: v for k, v in flags.items() if k in _SETTING_FLAGS and v is not None}
    return Settings(**given)


def build_cascade_from_flags(
    task_name: str | None,
    labels: str | None,
    stages: str | None,
    operating_point: dict[str, float | None],
    seed: int | None,
    warmup: int | None,
    llm: str | None,
    llm_records: str | None,
    llm_url: str | None,
    llm_model: str | None,
    settings: Settings,
    overrides: dict[str, Any] | None = None,
    stage_options: dict[str, dict[str, Any]] | None = None,
) -> Cascade:
    """The cascade a worker serves, from its flags (``None``: not given, so ``overrides``, the
    config file's ``[cascade]`` table, or the defaults decide)."""
    from streamcascade.models.cascade import CascadeConfig, build_cascade
    from streamcascade.models.llm.factory import make_llm

    task = resolve_task(task_name, labels)
    if task is None:
        raise ConfigurationError("name the task: --task imdb|hatespeech|isear, or --labels a,b")
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    backend = make_llm(task, recorded=llm, records_path=Path(llm_records) if llm_records else None,
                       url=llm_url, model=llm_model, api_key=api_key,
                       concurrency=settings.llm_concurrency, timeout=settings.llm_timeout_s,
                       deadline=settings.llm_deadline_s, hedge=settings.llm_hedge)
    values: dict[str, Any] = dict(overrides or {})
    if "on_llm_failure" in values:  # one place for it, where flags and the environment reach
        raise ConfigurationError("set on_llm_failure under [worker] or with --on-llm-failure, "
                                 "not under [cascade]")
    values["on_llm_failure"] = settings.on_llm_failure
    if stages is not None:
        values["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    if seed is not None:
        values["seed"] = seed
    if warmup is not None:
        values["warmup"] = warmup
    given = {k: v for k, v in operating_point.items() if v is not None}
    if given:  # a flag's operating point replaces the file's (there is only one)
        for key in operating_point:
            values.pop(key, None)
        values.update(given)
    config = CascadeConfig.from_dict(values)
    return build_cascade(task, backend, config, **(stage_options or {}))


def resolve_task(task_name: str | None, labels: str | None) -> Task | None:
    """The task of ``--task`` or ``--labels``; None if neither is given."""
    from streamcascade.models.tasks import TASKS, generic_task
    from streamcascade.models.types import LabelSet

    if task_name and labels:
        raise ConfigurationError("give --task or --labels, not both")
    if labels:
        return generic_task("custom", LabelSet.of(x.strip() for x in labels.split(",")))
    if task_name:
        if task_name not in TASKS:
            raise ConfigurationError(f"unknown task {task_name!r}; known: {sorted(TASKS)}")
        return TASKS[task_name]
    return None


def parse_stage_options(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("onnx.variant=int8", "hashed.n_features=65536")`` as ``{stage: {option: value}}``;
    values are read as JSON when they parse (numbers, booleans), else kept as strings."""
    import json

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        stage, dot, key = target.partition(".")
        if not (sep and dot and stage and key):
            raise ConfigurationError(f"--stage-option wants STAGE.KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options.setdefault(stage, {})[key] = value
    return options


def make_app(settings: Settings, bootstrap: str) -> Any:
    """A Faust app for one worker: no web server, read from the earliest offset."""
    import faust

    return faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap}",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=settings.state_max_bytes,
        topic_replication_factor=1,
        # Commit on the timer only: a count-triggered commit runs inside the fetch loop and holds
        # up every record behind it while the producer flushes.
        broker_commit_every=1_000_000,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
    )


@click.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config,
              is_eager=True, expose_value=False, help="TOML file with [worker] and [cascade].")
@click.option("--bootstrap", help="Kafka bootstrap servers (default: $STREAMCASCADE_BOOTSTRAP).")
@click.option("--app-id", "app_id", help="Faust app id = consumer group (workers share it).")
@click.option("--input", "input_topic", help="Input topic of JSON events.")
@click.option("--output", "output_topic", help="Output topic of JSON answers, keyed by id.")
@click.option("--feedback", "feedback_topic", help="Feedback topic {id, label, source}.")
@click.option("--dlq", "dlq_topic",
              help="Dead-letter topic (default: dead-letters; if set empty, "
                   "<input>-dead-letters).")
@click.option("--state-topic", "state_topic", help="Compacted model-state topic.")
@click.option("--id-field", "id_field", help="Field of the event id in input records.")
@click.option("--text-field", "text_field", help="Field of the text in input records.")
@click.option("--program", "program_name", metavar="NAME|MODULE:ATTRIBUTE",
              help="Serve a foundation-model program instead of a cascade: a built-in one "
                   "(`streamcascade program list`) or your own Program.")
@click.option("--budget", type=float,
              help="Program: cost per event to keep (parameters relative to BERT-base).")
@click.option("--budget-mode", "budget_mode", type=click.Choice(["target", "cap"]),
              help="Program: spend the budget (target, the default) or at most it (cap).")
@click.option("--cost-weight", "cost_weight", type=float,
              help="Program: a fixed price of cost instead of a budget.")
@click.option("--backend-cost", "backend_cost", multiple=True, metavar="NAME=COST",
              help="Program: the price of a backend per call (repeatable).")
@click.option("--task", "task_name", help="A built-in task: imdb, hatespeech or isear.")
@click.option("--labels", help="A custom task's labels, comma-separated.")
@click.option("--stages", help="Stages before the LLM, cheapest first (hashed, onnx); "
                               "default: hashed.")
@click.option("--stage-option", "stage_option", multiple=True, metavar="STAGE.KEY=VALUE",
              help="An option of one stage, e.g. onnx.variant=int8 (repeatable).")
@click.option("--mu", type=float, help="Operating point: the paper's raw cost coefficient.")
@click.option("--target-llm-share", type=float, help="Operating point: share sent to the LLM.")
@click.option("--max-quality-loss", type=float, help="Operating point: largest loss vs the LLM.")
@click.option("--warmup", type=int, help="Demonstrations learned before stages may answer.")
@click.option("--seed", type=int, help="Seed of the cascade's randomness (default 0).")
@click.option("--llm", help="Recorded LLM: the answers' name in the records file (a program: "
                            "names, comma-separated; default: every recorded LLM there).")
@click.option("--llm-records", type=click.Path(exists=True, dir_okay=False),
              help="Stream file with the recorded answers.")
@click.option("--llm-url", help="Live OpenAI-compatible LLM server.")
@click.option("--llm-model", help="Model name on the live server.")
@click.option("--llm-concurrency", "llm_concurrency", type=int,
              help="Events the live LLM client asks at once (default 8).")
@click.option("--llm-timeout", "llm_timeout_s", type=float,
              help="Seconds one request to the live LLM may take (default 10).")
@click.option("--llm-deadline", "llm_deadline_s", type=float,
              help="Seconds an event may spend asking the live LLM, retries included "
                   "(default: three request timeouts).")
@click.option("--llm-hedge/--no-llm-hedge", "llm_hedge", default=None,
              help="Send a request slower than the LLM's recent p95 again; the first answer "
                   "wins (default on).")
@click.option("--on-llm-failure", "on_llm_failure",
              type=click.Choice(LLM_FAILURE_MODES),
              help="An event the LLM cannot answer: answered by the best earlier stage and "
                   "marked degraded, a dead letter (the default), or asked again until the LLM "
                   "answers (the partition waits).")
@click.option("--batch-size", "batch_size", type=int, help="Events per micro-batch (max).")
@click.option("--batch-time", "batch_time_s", type=float, help="Seconds a micro-batch waits.")
@click.option("--max-payload-bytes", "max_payload_bytes", type=int)
@click.option("--decision-ttl", "decision_ttl_s", type=float,
              help="Seconds events and feedback wait for each other.")
@click.option("--learn-batch-size", "learn_batch_size", type=int)
@click.option("--learn-batch-time", "learn_batch_time_s", type=float)
@click.option("--publish-interval", "publish_interval_s", type=float,
              help="Least seconds between published model states.")
@click.option("--metrics-port", "metrics_port", type=int, help="Serve Prometheus metrics here.")
@click.option("--fetch-max-wait-ms", "fetch_max_wait_ms", type=int,
              help="Longest wait (ms) of a consumer fetch at the broker (default 10).")
@click.option("--freeze-heap/--no-freeze-heap", "freeze_heap", default=None,
              help="Exempt start-up objects from the garbage collector once ready (default on).")
@click.option("--create-topics/--no-create-topics", "create_topics", default=None,
              help="Create the missing topics the operator owns at start (default on).")
@click.option("--wait-for-input/--no-wait-for-input", "wait_for_input", default=None,
              help="Wait at start for a missing input topic rather than stop (default off).")
@click.option("--summary-interval", "summary_interval_s", type=float,
              help="Seconds between one-line summaries of the work in the log (0: none).")
@click.option("--pass-through", is_flag=True, help="Run the benchmark's pass-through agent.")
@click.option("--loglevel", default="warn", show_default=True,
              type=click.Choice(list(_LOG_LEVELS)))
def worker(
    program_name: str | None,
    budget: float | None,
    budget_mode: str | None,
    cost_weight: float | None,
    backend_cost: tuple[str, ...],
    task_name: str | None,
    labels: str | None,
    stages: str | None,
    stage_option: tuple[str, ...],
    mu: float | None,
    target_llm_share: float | None,
    max_quality_loss: float | None,
    warmup: int | None,
    seed: int | None,
    llm: str | None,
    llm_records: str | None,
    llm_url: str | None,
    llm_model: str | None,
    pass_through: bool,
    loglevel: str,
    **flags: Any,
) -> None:
    """Run the cascade operator on a topic until stopped (SIGTERM or Ctrl-C).

    With --program it serves a foundation-model program instead of a cascade (the same operator,
    topics and state; --budget and the other program flags shape its policy).

    Start several with the same --app-id to share the input's partitions; they serve one model
    state. The state signing key comes from $STREAMCASCADE_STATE_SIGNING_KEY. At start the
    topics are checked, and those the operator owns created, as by ``attach``. The operator's own
    lines (the partitions it answers, a periodic summary) are logged at INFO under any
    --loglevel but error and crit.
    """
    import dataclasses

    import faust

    from streamcascade.attach import install_operator
    from streamcascade.benchkit.passthrough import install_passthrough
    from streamcascade.commands.worker_program import ProgramFlags, build_program_from_flags
    from streamcascade.operators.topics import prepare_topics

    ctx = click.get_current_context()
    try:
        settings = build_settings(**flags)
        bootstrap = settings.bootstrap
        if not bootstrap:
            raise ConfigurationError("no Kafka cluster: pass --bootstrap or set "
                                     "STREAMCASCADE_BOOTSTRAP (or run `streamcascade kafka up`)")
        # Everything that can be refused is checked before a topic is created on the cluster.
        app = make_app(settings, bootstrap)
        topics = settings.operator_topics()
        if pass_through and program_name is not None:
            raise ConfigurationError("--pass-through answers nothing: no --program with it")
        if pass_through:  # input and output only
            topics = dataclasses.replace(topics, feedback=None, dlq=None, state=None)
            install_passthrough(app, topics.source, topics.sink, settings.record_codec(),
                                settings.operator_options(), settings.metrics_port)
            # (The operator checks its topics as it starts; this agent has no start-up.)
            prepare_topics(bootstrap, topics, create=settings.create_topics)
        elif program_name is not None:
            cascade_only = {"--mu": mu, "--target-llm-share": target_llm_share,
                            "--max-quality-loss": max_quality_loss,
                            "[cascade]": ctx.meta.get("cascade_overrides") or None}
            given = [flag for flag, value in cascade_only.items() if value is not None]
            if given:
                raise ConfigurationError(f"{', '.join(given)} set a cascade, not a program")
            model = build_program_from_flags(
                program_name, resolve_task(task_name, labels),
                ProgramFlags(budget, budget_mode, cost_weight, backend_cost, warmup, seed,
                             stages, parse_stage_options(stage_option), llm, llm_records,
                             llm_url, llm_model), settings)
            install_operator(app, model, topics, settings)
        else:
            program_only = {"--budget": budget, "--budget-mode": budget_mode,
                            "--cost-weight": cost_weight, "--backend-cost": backend_cost or None}
            given = [flag for flag, value in program_only.items() if value is not None]
            if given:
                raise ConfigurationError(f"{', '.join(given)} shape a program: add --program")
            cascade = build_cascade_from_flags(
                task_name, labels, stages,
                {"mu": mu, "target_llm_share": target_llm_share,
                 "max_quality_loss": max_quality_loss},
                seed, warmup, llm, llm_records, llm_url, llm_model, settings,
                ctx.meta.get("cascade_overrides"), parse_stage_options(stage_option))
            install_operator(app, cascade, topics, settings)
    except (StreamcascadeError, ValidationError, OSError) as exc:  # OSError: a port in use
        raise click.ClickException(str(exc)) from None
    runner = faust.Worker(app, loglevel=loglevel, quiet=True,
                          logging_config=operator_logging(loglevel))
    # Faust's terminal spinner sets the root logger to DEBUG (to spin on every record) whenever
    # the level is WARN or above: every aiokafka request and send then builds a log record that
    # nobody prints, a measured 5% of the event loop at 1,000 events/s. No spinner, no DEBUG.
    runner.spinner = None
    runner.execute_from_commandline()


def operator_logging(loglevel: str) -> dict[str, Any]:
    """The worker's logging configuration beyond Faust's: the operator's own lines (the
    partitions it answers, its summaries) at INFO under ``--loglevel warn`` too, so that a
    person sees it work without Faust's and aiokafka's INFO chatter. Merged into Faust's."""
    level = _LOG_LEVELS[loglevel]
    ours = logging.INFO if level == logging.WARNING else level
    return {
        "merge": True,
        "handlers": {"streamcascade": {"class": "logging.StreamHandler", "formatter": "default",
                                       "level": ours}},
        "loggers": {"streamcascade": {"level": ours, "handlers": ["streamcascade"],
                                      "propagate": False}},
    }


@click.command()
@click.option("--limit", type=int, help="Events of the stream to use (default: all 10,703).")
@click.option("--rate", type=float, default=400.0, show_default=True,
              help="Events per second produced into the input topic.")
@click.option("--feedback-share", type=float, default=0.1, show_default=True,
              help="Share of events whose ground truth the labelling team sends.")
@click.option("--feedback-delay", type=float, default=2.0, show_default=True,
              help="Seconds after an answer that its ground truth arrives.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out",
              show_default=True, help="Where the report and the plot go.")
@click.option("--bootstrap", help="Use this cluster instead of starting a local broker.")
@click.option("--partitions", type=int, default=2, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Give up waiting for outputs after this many seconds.")
@click.option("--target-llm-share", type=float,
              help="Operating point: share of events sent to the LLM.")
@click.option("--max-quality-loss", type=float,
              help="Operating point: largest expected loss of the task's metric against the LLM "
              "alone (default 0.02, an upper bound; see the README).")
@click.option("--stages", default="auto", show_default=True,
              help="Stages before the LLM, e.g. hashed,onnx (onnx needs `streamcascade onnx "
              "export` first); auto: hashed,onnx where ONNX Runtime has a GPU and the encoder is "
              "exported, else hashed. The report names the list used.")
def demo(**options: Any) -> None:
    """The main job: HateSpeech through the operator on a local broker, then a report and a plot."""
    from streamcascade.demo import run_demo

    try:
        run_demo(**options)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
