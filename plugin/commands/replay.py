"""``streamcascade replay``: run a labelled stream through the cascade in process, and score it.

The stream is answered event by event (or in small micro-batches, each answered before it is
learned from), beside a static confidence-threshold cascade over the same stages. ``--sweep``
replays a range of operating points of both and plots the quality-cost curves.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import click

from streamcascade.errors import ConfigurationError, StreamcascadeError
from streamcascade.models import replay as rp
from streamcascade.models.baseline import build_baseline
from streamcascade.models.cascade import (
    DEFAULT_LLM_FAILURE,
    LLM_FAILURE_MODES,
    Cascade,
    CascadeConfig,
    build_cascade,
)
from streamcascade.models.datasets import read_stream, stream_task_name
from streamcascade.models.headroom import headroom as headroom_of
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.llm.factory import make_llm
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.tasks import TASKS, Task, generic_task
from streamcascade.models.types import LabelSet

# The learned policy's sweep steps its natural knob, the quality budget (the default, 0.02, is the
# main run); a target share holds the share fixed over time, even while the stage is still poor.
SWEEP_LOSSES = (0.0025, 0.005, 0.01, 0.04, 0.08, 0.16, 0.32)
# Baseline thresholds as a share of the way from chance (1/K) to certainty.
SWEEP_CONFIDENCE = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.96, 0.99)


def _task(name: str, dataset: Path, labels: str | None, rows: list[Any]) -> Task:
    name = stream_task_name(dataset) if name == "auto" else name
    if name in TASKS:
        return TASKS[name]
    if labels:
        names = [n.strip() for n in labels.split(",") if n.strip()]
    else:  # the label set of the file: the task's definition, not a model fitted on the stream
        names = sorted({r.label for r in rows if r.label is not None})
        click.echo(f"note: labels taken from the file: {names}", err=True)
    try:
        return generic_task(name, LabelSet.of(names))
    except ValueError as exc:  # fewer than two labels, or a repeated one
        raise ConfigurationError(f"{dataset}: {exc}") from None


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@click.command("replay")
@click.option("--dataset", "dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="A stream in the shared format (jsonl or jsonl.gz).")
@click.option("--llm", "llm_name", help="Recorded LLM: the key of its answers in the rows' 'llm'.")
@click.option("--llm-url", help="A live OpenAI-compatible server instead of recorded answers.")
@click.option("--llm-model", help="The live server's model name.")
@click.option("--task", "task_name", default="auto", show_default=True,
              help="imdb, hatespeech, isear, or auto (from the file name; else a generic task).")
@click.option("--labels", help="Comma-separated labels of a generic task (default: the file's).")
@click.option("--stages", default="hashed", show_default=True, help="Comma-separated stage names.")
@click.option("--stage-option", "stage_option", multiple=True, metavar="STAGE.KEY=VALUE",
              help="An option of one stage, e.g. onnx.stack=false (repeatable). A stage that "
              "trains in the background runs in lockstep unless told otherwise "
              "(finetune.lockstep=true): each snapshot answers from its point of the stream.")
@click.option("--mu", type=float, help="The paper's raw cost coefficient.")
@click.option("--target-llm-share", type=float, help="Share of events sent to the LLM.")
@click.option("--max-quality-loss", type=float,
              help="Largest expected loss against the LLM in metric units (default 0.02).")
@click.option("--sweep", is_flag=True, help="Replay a range of operating points and plot them.")
@click.option("--sweep-losses", default=",".join(map(str, SWEEP_LOSSES)), show_default=True,
              help="Quality budgets (max loss vs the LLM) of the learned policy's sweep.")
@click.option("--sweep-shares", default="", help="Target LLM shares to add to the sweep.")
@click.option("--sweep-confidence", default=",".join(map(str, SWEEP_CONFIDENCE)),
              show_default=True, help="Baseline thresholds, as a share of the way from chance "
              "(1/K) to certainty.")
@click.option("--feedback", type=click.Choice(rp.FEEDBACK_MODES), default="llm", show_default=True,
              help="Which labels teach the cascade: the LLM's answers, ground truth, or both.")
@click.option("--truth-share", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Share of events whose ground truth arrives (with --feedback ground_truth or "
              "both), as from a labelling team that labels a sample.")
@click.option("--audit-rate", type=float, help="Share of early answers also sent to the LLM.")
@click.option("--stage-cost", "stage_costs", multiple=True, metavar="NAME=PRICE",
              help="Price per event of a stage or of the LLM (default: paper units, parameters "
              "relative to BERT-base). Repeatable.")
@click.option("--warmup", type=int, help="Demonstrations learned before any stage may answer.")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Micro-batch size: a batch is answered before it is learned from.")
@click.option("--baseline-threshold", type=float, default=0.9, show_default=True,
              help="Confidence threshold of the static baseline in a single run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shuffle", is_flag=True, help="Replay the stream in a random order (by --seed).")
@click.option("--limit", type=int, help="Only the first N events (after shuffling).")
@click.option("--headroom", is_flag=True,
              help="Also score a deferral policy after the first stage that knows, in hindsight, "
                   "where the stage disagrees with the LLM: how far the stage can take the "
                   "cascade (recorded LLM answers only).")
@click.option("--on-llm-failure", type=click.Choice(LLM_FAILURE_MODES),
              default=DEFAULT_LLM_FAILURE, show_default=True,
              help="An event the LLM cannot answer: answered by the best earlier stage and marked "
                   "degraded, left unanswered (a dead letter in the operator), or asked again "
                   "until the LLM answers.")
@click.option("--in-flight", type=click.IntRange(min=1), default=1, show_default=True,
              help="Micro-batches answered at once (a live LLM's latency then overlaps).")
@click.option("--llm-concurrency", type=click.IntRange(min=1),
              help="Events the live LLM client asks at once.")
@click.option("--llm-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds one request to the live LLM may take.")
@click.option("--llm-deadline", type=click.FloatRange(min=0, min_open=True),
              help="Seconds an event may spend asking the live LLM, retries included.")
@click.option("--warm-start", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start every cascade of the run from this state (`streamcascade train --out`).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG of the quality-cost curves (with --sweep).")
def replay(dataset: Path, llm_name: str | None, llm_url: str | None, llm_model: str | None,
           task_name: str, labels: str | None, stages: str, stage_option: tuple[str, ...],
           mu: float | None, target_llm_share: float | None, max_quality_loss: float | None,
           sweep: bool, sweep_losses: str, sweep_shares: str, sweep_confidence: str, feedback: str,
           truth_share: float, audit_rate: float | None, stage_costs: tuple[str, ...],
           warmup: int | None, batch_size: int, baseline_threshold: float, seed: int,
           shuffle: bool, limit: int | None, headroom: bool, json_out: Path,
           plot_out: Path | None, on_llm_failure: str, in_flight: int,
           llm_concurrency: int | None, llm_timeout: float | None,
           llm_deadline: float | None, warm_start: Path | None = None) -> None:
    """Replay a labelled stream through the cascade and its static baseline; write JSON."""
    from streamcascade.commands.worker import parse_stage_options

    if plot_out is not None and not sweep:
        raise click.UsageError("--plot draws the swept curves: give --sweep too")
    if limit is not None and limit < 1:
        raise click.BadParameter("must be at least 1", param_hint="--limit")
    try:
        grid = ([{"max_quality_loss": v} for v in _floats(sweep_losses)]
                + [{"target_llm_share": v} for v in _floats(sweep_shares)],
                _floats(sweep_confidence)) if sweep else None
        result = _run(dataset, llm_name, llm_url, llm_model, task_name, labels, stages, mu,
                      target_llm_share, max_quality_loss, grid, feedback, truth_share,
                      audit_rate, warmup, batch_size, baseline_threshold, seed, shuffle, limit,
                      plot_out, headroom, _prices(stage_costs),
                      parse_stage_options(stage_option), on_llm_failure=on_llm_failure,
                      in_flight=in_flight, llm_options={"concurrency": llm_concurrency,
                                                        "timeout": llm_timeout,
                                                        "deadline": llm_deadline},
                      warm_start=warm_start.read_bytes() if warm_start else None)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    alone = result["llm_quality"]
    click.echo(f"{result['dataset']}: {result['metric']} {result['quality']:.4f} (LLM alone "
               f"{'n/a' if alone is None else format(alone, '.4f')}), LLM share "
               f"{result['llm_call_fraction']:.3f}, relative cost {result['relative_cost']:.3f}"
               f" -> {json_out}")
    if "headroom" in result:
        room = result["headroom"]
        shares = {rule: "never" if share is None else f"{share:.0%}"
                  for rule, share in room["min_llm_share_within"].items()}
        click.echo(f"headroom of {room['stage']}: within {room['within'] * 100:g} point(s) of the "
                   f"LLM from {shares['hindsight_policy']} of events to it in hindsight "
                   f"({shares['confidence']} by confidence alone); the stage disagrees with the "
                   f"LLM on {room['disagreement_share']:.1%}")


def _run(dataset: Path, llm_name: str | None, llm_url: str | None, llm_model: str | None,
         task_name: str, labels: str | None, stages: str, mu: float | None,
         target_llm_share: float | None, max_quality_loss: float | None,
         sweep: tuple[list[dict[str, float]], list[float]] | None, feedback: str,
         truth_share: float, audit_rate: float | None, warmup: int | None, batch_size: int,
         baseline_threshold: float, seed: int, shuffle: bool, limit: int | None,
         plot_out: Path | None, headroom: bool = False, prices: dict[str, float] | None = None,
         stage_options: dict[str, dict[str, Any]] | None = None, *,
         on_llm_failure: str = DEFAULT_LLM_FAILURE, in_flight: int = 1,
         llm_options: dict[str, Any] | None = None,
         warm_start: bytes | None = None) -> dict[str, Any]:
    if batch_size < 1:
        raise ConfigurationError("--batch-size must be at least 1")
    rows = read_stream(dataset)
    if shuffle:
        random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise ConfigurationError(f"{dataset} holds no events")
    task = _task(task_name, dataset, labels, rows)
    llm = _llm(task, dataset, llm_name, llm_url, llm_model, **(llm_options or {}))
    truth = rp.truth_of(rows, task)
    alone = rp.llm_alone(rows, llm)
    if headroom and alone is None:
        raise ConfigurationError("--headroom needs the LLM's answer to every event: use recorded "
                                 "answers (--llm NAME), not a live server")
    common: dict[str, Any] = {"audit_rate": audit_rate, "warmup": warmup,
                              "stage_costs": prices or None, "on_llm_failure": on_llm_failure}
    config = _config(stages, seed, mu=mu, target_llm_share=target_llm_share,
                     max_quality_loss=max_quality_loss, **common)

    # A replay paces background training as the operator would see it (lockstep, say).
    options = rp.replay_stage_options(config.stages, stage_options or {})

    def learned(point: dict[str, Any]) -> Cascade:
        return _warm(build_cascade(task, llm, _config(stages, seed, **point, **common), **options),
                     warm_start)

    def baseline(point: dict[str, Any]) -> Cascade:
        return _warm(build_baseline(task, llm, _config(stages, seed, **common),
                                    point["threshold"], **options), warm_start)

    main = _one(rows, task, _warm(build_cascade(task, llm, config, **options), warm_start),
                feedback, truth_share, batch_size, "cascade", in_flight)
    rp.add_llm_alone(main, task, alone, truth)
    base = _one(rows, task, baseline({"threshold": baseline_threshold}), feedback, truth_share,
                batch_size, f"baseline@{baseline_threshold}", in_flight)
    rp.add_llm_alone(base, task, alone, truth)
    result: dict[str, Any] = {
        "dataset": str(dataset), "task": task.name, "llm": llm.name, "feedback": feedback,
        "truth_share": truth_share if feedback != "llm" else None,
        "seed": seed, "shuffle": shuffle, "limit": limit, "batch_size": batch_size,
        "in_flight": in_flight,
        "stage_options": options,
        "operating_point": dict(zip(("mode", "value"), config.operating_point(), strict=True)),
        **_clean(main), "config": config.to_dict(),
        "baseline": {"threshold": baseline_threshold, **_clean(base)},
    }
    if headroom and alone is not None:
        first = config.stages[0]
        stage = make_stage(first, task, **options.get(first, {}))
        result["headroom"] = headroom_of(rows, task, stage, alone, truth)
    if sweep is not None:
        k = len(task.labels)
        learned_points, confidence = sweep
        curves = []
        for name, make, points in (
                ("learned", learned, learned_points),
                ("baseline", baseline, [
                    {"threshold": round(1 / k + (1 - 1 / k) * q, 4)} for q in confidence])):
            runs = rp.sweep(rows, task, make, points, feedback=feedback, truth_share=truth_share,
                            batch_size=batch_size, in_flight=in_flight, label=name)
            curves.append([_clean(rp.add_llm_alone(r, task, alone, truth)) for r in runs])
        learned_curve = [*curves[0], _clean(main) | {"point": {"default": True}}]
        result["sweep"] = {"learned": learned_curve, "baseline": curves[1],
                           "comparison": rp.dominance(learned_curve, curves[1])}
        if plot_out is not None:
            from streamcascade.report import plot_sweep

            order = "shuffled" if shuffle else "stream order"
            sampled = feedback != "llm" and truth_share < 1
            truth_note = f" ({truth_share:.0%} with ground truth)" if sampled else ""
            result["plot"] = str(plot_sweep(
                plot_out, learned_curve, curves[1], llm_quality=main["llm_quality"],
                metric=main["metric"], default_point=main,
                hindsight=result.get("headroom", {}).get("curves", {}).get("hindsight_policy"),
                title=f"{task.name}: {llm.name}, feedback {feedback}{truth_note}, {order}, "
                      f"seed {seed}"))
    return result


def _prices(pairs: tuple[str, ...]) -> dict[str, float]:
    prices = {}
    for pair in pairs:
        name, _, price = pair.partition("=")
        try:
            prices[name.strip()] = float(price)
        except ValueError:
            raise ConfigurationError(f"--stage-cost takes NAME=PRICE, got {pair!r}") from None
    return prices


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(f"expected comma-separated numbers, got {text!r}") from None


def _config(stages: str, seed: int, **overrides: Any) -> CascadeConfig:
    config = CascadeConfig(stages=[s.strip() for s in stages.split(",") if s.strip()], seed=seed)
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    config.validate()
    return config


def _llm(task: Task, dataset: Path, llm_name: str | None, llm_url: str | None,
         llm_model: str | None, concurrency: int | None = None, timeout: float | None = None,
         deadline: float | None = None) -> LLMBackend:
    from streamcascade.settings import Settings

    key = Settings().llm_api_key
    return make_llm(task, recorded=llm_name, records_path=dataset, url=llm_url, model=llm_model,
                    api_key=key.get_secret_value() if key else None, concurrency=concurrency,
                    timeout=timeout, deadline=deadline)


def _one(rows: list[Any], task: Task, cascade: Cascade, feedback: str, truth_share: float,
         batch_size: int, desc: str, in_flight: int = 1) -> dict[str, Any]:
    return rp.replay(rows, task, cascade, feedback=feedback, truth_share=truth_share,
                     batch_size=batch_size, in_flight=in_flight, progress=desc)


def _warm(cascade: Cascade, state: bytes | None) -> Cascade:
    """``cascade`` loaded with ``state`` (a trained cascade's), when one is given."""
    if state is not None:
        cascade.load_state(state)
    return cascade
