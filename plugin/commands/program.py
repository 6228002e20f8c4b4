"""``streamcascade program``: the built-in foundation-model programs, listed and replayed.

``program replay`` runs a labelled stream through a program whose policy learns, from ground
truth, which backend answers each module call, beside the baselines of
:mod:`streamcascade.models.programs.compare`; ``--plot`` adds a sweep over budgets.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from streamcascade.errors import ConfigurationError, StreamcascadeError

if TYPE_CHECKING:
    from streamcascade.models.programs.program import ProgramConfig


@click.group("program")
def program() -> None:
    """Foundation-model programs: modules whose backends a learned policy picks per event."""


@program.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def list_programs(as_json: bool) -> None:
    """Name the built-in programs, their tasks, and why each is a fair test."""
    from streamcascade.models.programs.builtin import PROGRAMS

    rows = [{"name": p.name, "tasks": list(p.tasks) if p.tasks else "any",
             "summary": p.summary, "fair_test": p.fair_test} for p in PROGRAMS.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        tasks = row["tasks"] if isinstance(row["tasks"], str) else ", ".join(row["tasks"])
        click.echo(f"{row['name']} ({tasks})\n  {row['summary']}\n  fair test: "
                   f"{row['fair_test']}")


@program.command("replay")
@click.option("--program", "name", required=True, help="A built-in program (see `program list`).")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="A labelled stream in the shared format, with recorded answers.")
@click.option("--feedback", type=click.Choice(["ground_truth"]), default="ground_truth",
              show_default=True, help="What teaches the policy: the final answer's ground truth.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              required=True)
@click.option("--budget", type=float,
              help="Cost per event to keep (paper units: parameters relative to BERT-base; the "
                   "policy's own features included).")
@click.option("--budget-mode", type=click.Choice(["target", "cap"]), default="target",
              show_default=True, help="Spend the budget, or spend at most the budget.")
@click.option("--cost-weight", type=float,
              help="A fixed price of cost instead of a budget (quality per dearest-backend cost).")
@click.option("--truth-share", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Share of events whose ground truth arrives.")
@click.option("--truth-delay", type=click.IntRange(min=0), default=0, show_default=True,
              help="Events answered before an event's ground truth arrives.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shuffle", is_flag=True, help="Replay the stream in a random order (by --seed).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N events.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0),
              help="Ground truths before the policy learns (default 200).")
@click.option("--no-onnx", is_flag=True, help="Leave the ONNX encoder stage out.")
@click.option("--llm-url", help="A live OpenAI-compatible server as one more backend.")
@click.option("--llm-model", help="The live server's model name.")
@click.option("--backend-cost", "backend_costs", multiple=True, metavar="NAME=COST",
              help="The price of a backend per call, in the budget's units (repeatable).")
@click.option("--stage-option", multiple=True, metavar="STAGE.KEY=VALUE",
              help="An option of one stage, e.g. onnx.variant=fp32 (repeatable).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG of quality against cost: the policy swept over budgets, each baseline.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def replay_program(name: str, dataset: Path, feedback: str, json_out: Path,
                   budget: float | None, budget_mode: str, cost_weight: float | None,
                   truth_share: float,
                   truth_delay: int, seed: int, shuffle: bool, limit: int | None,
                   batch_size: int, warmup: int | None, no_onnx: bool, llm_url: str | None,
                   llm_model: str | None, backend_costs: tuple[str, ...],
                   stage_option: tuple[str, ...], plot_out: Path | None, quiet: bool) -> None:
    """Replay a labelled stream through a built-in program and its baselines; write JSON."""
    try:
        config = _config(budget, budget_mode, cost_weight, seed, warmup, backend_costs)
        result = _replay(name, dataset, config, truth_share, truth_delay, seed, shuffle, limit,
                         batch_size, no_onnx, llm_url, llm_model, stage_option, plot_out,
                         not quiet)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    result["feedback"] = feedback
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    alone = result["baselines"].get("gpt-3.5-turbo-1106")
    versus = (f" (GPT-3.5 alone {alone['quality']:.4f} at {alone['cost_per_event']:.4g})"
              if alone else "")
    click.echo(f"{name} on {dataset.name}: {result['metric']} {result['quality']:.4f} at "
               f"{result['cost_per_event']:.4g} per event{versus}; oracle "
               f"{_fmt(result['oracle_quality'])} -> {json_out}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _config(budget: float | None, budget_mode: str, cost_weight: float | None, seed: int,
            warmup: int | None, backend_costs: tuple[str, ...]) -> ProgramConfig:
    from streamcascade.models.programs.program import ProgramConfig

    config = ProgramConfig(budget=budget, budget_mode=budget_mode, cost_weight=cost_weight,
                           seed=seed, backend_costs=_prices(backend_costs))
    if warmup is not None:
        config.warmup = warmup
    config.validate()
    return config


def _replay(name: str, dataset: Path, config: ProgramConfig, truth_share: float,
            truth_delay: int, seed: int, shuffle: bool, limit: int | None, batch_size: int,
            no_onnx: bool, llm_url: str | None, llm_model: str | None,
            stage_option: tuple[str, ...], plot_out: Path | None,
            progress: bool) -> dict[str, Any]:
    from streamcascade.commands.worker import parse_stage_options
    from streamcascade.models.datasets import read_stream, stream_task_name
    from streamcascade.models.programs.builtin import Sources
    from streamcascade.models.programs.compare import (
        ReplaySettings,
        budget_sweep,
        compare,
        sweep_budgets,
    )
    from streamcascade.models.tasks import TASKS

    task_name = stream_task_name(dataset)
    task = TASKS.get(task_name)
    if task is None:
        raise ConfigurationError(f"programs run on the built-in streams {sorted(TASKS)}; "
                                 f"{dataset.name} names none")
    rows = read_stream(dataset)
    if shuffle:
        random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit is not None else rows
    sources = Sources(dataset=dataset, onnx=not no_onnx, live=_live(task, llm_url, llm_model),
                      stage_options=parse_stage_options(stage_option))
    settings = ReplaySettings(truth_share=truth_share, truth_delay=truth_delay,
                              batch_size=batch_size, progress=progress)
    result = compare(rows, task, name, sources, config, settings)
    if plot_out is not None:
        dearest = result["baselines"]["dearest"]["cost_per_event"]
        result["sweep"] = budget_sweep(rows, task, name, sources, config, settings,
                                       sweep_budgets(dearest))
        order = f"shuffled (seed {seed})" if shuffle else "stream order"
        result["plot"] = str(plot_program(plot_out, result, title=(
            f"{name} on {task.name}, {order}, ground truth for {truth_share:.0%}")))
    result.update(dataset=str(dataset), task=task.name, seed=seed, shuffle=shuffle, limit=limit,
                  truth_share=truth_share, truth_delay=truth_delay, batch_size=batch_size,
                  onnx=not no_onnx)
    return result


def _prices(pairs: tuple[str, ...]) -> dict[str, float]:
    prices = {}
    for pair in pairs:
        name, sep, price = pair.partition("=")
        try:
            if not sep:
                raise ValueError(pair)
            prices[name.strip()] = float(price)
        except ValueError:
            raise ConfigurationError(f"--backend-cost takes NAME=COST, got {pair!r}") from None
    return prices


def _live(task: Any, url: str | None, model: str | None) -> Any:
    if url is None:
        if model is not None:
            raise ConfigurationError("--llm-model names the model of --llm-url: give both")
        return None
    from streamcascade.models.llm.factory import make_llm
    from streamcascade.settings import Settings

    key = Settings().llm_api_key
    return make_llm(task, url=url, model=model,
                    api_key=key.get_secret_value() if key else None)


def plot_program(out: Path, result: dict[str, Any], *, title: str) -> Path:
    """A PNG of quality against cost per event: the policy's budget sweep, the program's own
    run, each baseline, and the oracle's quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    sweep = sorted(result.get("sweep", []), key=lambda p: p["cost_per_event"])
    if sweep:
        ax.plot([p["cost_per_event"] for p in sweep], [p["quality"] for p in sweep], "o-",
                label="learned policy, swept over budgets", markersize=4)
    ax.plot([result["cost_per_event"]], [result["quality"]], "D", color="tab:red",
            markersize=8, label="learned policy, this run")
    markers = iter("s^v<>phX*")
    for name, point in result["baselines"].items():
        if point is None or point.get("same_as_program"):
            continue
        ax.plot([point["cost_per_event"]], [point["quality"]], next(markers, "x"),
                markersize=8, label=name)
    if result.get("oracle_quality") is not None:
        ax.axhline(result["oracle_quality"], color="tab:green", lw=0.8, ls=":",
                   label="hindsight oracle")
    ax.set_xlabel("cost per event (parameters relative to BERT-base)")
    ax.set_ylabel(result["metric"])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
