"""``streamcascade bench learning-guard``: the learner's guard on ordinary streams and under attack.

In process, no broker: the operator's own :class:`~streamcascade.operators.fleet_learner.
FleetLearner` learns what a worker's learner would read, and publishes (to a list) every
``--publish-every`` events, as its timer would. Each event is answered by the cascade (the hashed
stage, the recorded GPT-3.5 answers); its demonstrations are the LLM's answers to the events it
was asked about and the ground truth of ``--truth-share`` of the events. Two learners run on the
same events in the same order: one with the guard the worker installs (dedup, budget,
contradiction watch, publish gate holding back ``--holdout-share`` of the events), one with none.

- ``ordinary``: the stream as it is, in ``--orders`` shuffled orders. The guard must not get in the
  way: ``refused`` (candidate versions the gate refused) and ``alarms`` should be 0, and the
  accuracy of the answers (``accuracy``, every event answered while learning) should match the
  unguarded learner's.
- ``attack`` (with ``--attack``): halfway, 10,000 copies of one wrong ground-truth record and the
  flipped ground truth of the next ``--poisoned`` events arrive. Reported: whether the gate refused
  the poisoned version, the watch's alarms, and the accuracy of the answers on the ``--after``
  events that follow, guarded and not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from streamcascade.errors import StreamcascadeError

LLM = "gpt-3.5-turbo-1106"


@dataclass
class _Run:
    """One learner over one ordering: the cascade it serves and what it did."""

    cascade: Any
    learner: Any
    metrics: Any
    published: list[bytes]
    correct: int = 0
    answered: int = 0
    refused: int = 0


def _make_run(task: Any, dataset: Path, guarded: bool, holdout_share: float, seed: int) -> _Run:
    from streamcascade.models.cascade import CascadeConfig, build_cascade
    from streamcascade.models.llm.recorded import RecordedLLM
    from streamcascade.models.types import Demonstration
    from streamcascade.operators.fleet_learner import FleetLearner
    from streamcascade.operators.learning_guard import LearningGuard, Screened, preview_of
    from streamcascade.operators.metrics import OperatorMetrics
    from streamcascade.operators.publish_gate import PublishGate
    from streamcascade.operators.state_store import StateSigner

    cascade = build_cascade(task, RecordedLLM(dataset, LLM, task), CascadeConfig(seed=seed))
    metrics = OperatorMetrics(cascade.stage_names)
    published: list[bytes] = []

    async def publish(blob: bytes) -> None:
        published.append(blob)

    class NoGuard(LearningGuard):
        """Screens nothing and judges nothing: the learner as it was."""

        def screen(self, demos: Sequence[Demonstration]) -> Screened:
            return Screened(learn=list(demos))

    guard = (LearningGuard(task.labels, preview_of(cascade), gate=PublishGate(share=holdout_share))
             if guarded else NoGuard(task.labels, None))
    learner = FleetLearner(cascade, StateSigner(b"bench-learning-guard-key"), publish, metrics,
                           publish_interval_s=0.0, learn_slice=500, guard=guard)
    return _Run(cascade, learner, metrics, published)


def _record(event_id: str, text: str, label: str, source: str) -> bytes:
    return json.dumps({"id": event_id, "text": text, "label": label, "source": source}).encode()


async def _step(run: _Run, task: Any, rows: Sequence[Any], truth_ids: set[str],
                extra: Sequence[bytes] = (), scored: bool = True) -> None:
    """Answer ``rows``, then learn their demonstrations (and ``extra`` records)."""
    from streamcascade.models.types import Event

    answer = await run.cascade.answer([Event(r.id, r.text) for r in rows])
    if scored:
        run.answered += len(rows)
        run.correct += sum(d.label == r.label for d, r in zip(answer.decisions, rows, strict=True))
    records = [_record(d.event.id, d.event.text, task.labels.name(d.label), d.source)
               for d in answer.demonstrations]
    records += [_record(r.id, r.text, str(r.label), "ground_truth") for r in rows
                if r.id in truth_ids]
    records += list(extra)
    await run.learner.learn(records)


async def _publish(run: _Run) -> None:
    async def ack(_handle: Any) -> None:
        return None

    before = run.metrics.states_rejected._value.get()
    await run.learner.maybe_publish(ack, force=True)
    run.refused += int(run.metrics.states_rejected._value.get() - before)


def _alarms(run: _Run) -> int:
    return int(run.metrics.poisoning_alarms._value.get())


def _skipped(run: _Run) -> dict[str, int]:
    return {s.labels["reason"]: int(s.value) for m in run.metrics.demonstrations_skipped.collect()
            for s in m.samples if s.name.endswith("_total") and s.value}


async def _ordinary(task: Any, dataset: Path, rows: list[Any], truth_ids: set[str], seed: int,
                    holdout_share: float, batch: int, publish_every: int) -> dict[str, Any]:
    runs = {name: _make_run(task, dataset, name == "guarded", holdout_share, seed)
            for name in ("guarded", "unguarded")}
    for run in runs.values():
        for lo in range(0, len(rows), batch):
            await _step(run, task, rows[lo:lo + batch], truth_ids)
            if (lo + batch) % publish_every < batch:
                await _publish(run)
    guarded, plain = runs["guarded"], runs["unguarded"]
    return {"seed": seed, "events": len(rows), "publishes": len(guarded.published),
            "refused": guarded.refused, "alarms": _alarms(guarded),
            "usual_contradiction_share": guarded.learner.guard.watch.baseline_share(),
            "highest_contradiction_share": guarded.learner.guard.watch.highest_share,
            "skipped": _skipped(guarded),
            "accuracy": guarded.correct / guarded.answered,
            "unguarded_accuracy": plain.correct / plain.answered}


async def _attack(task: Any, dataset: Path, rows: list[Any], truth_ids: set[str], seed: int,
                  holdout_share: float, batch: int, publish_every: int, poisoned: int,
                  after: int) -> dict[str, Any]:
    half = (len(rows) - poisoned - after) // 2
    clean, target, follow = rows[:half], rows[half:half + poisoned], rows[half + poisoned:]
    follow = follow[:after]
    other = [n for n in task.labels.names]
    flood_row = clean[-1]
    wrong = next(n for n in other if n != flood_row.label)
    flood = [_record(flood_row.id, flood_row.text, wrong, "ground_truth")] * 10_000
    out: dict[str, Any] = {"seed": seed, "poisoned": poisoned, "after": after}
    for name in ("guarded", "unguarded"):
        run = _make_run(task, dataset, name == "guarded", holdout_share, seed)
        for lo in range(0, len(clean), batch):
            await _step(run, task, clean[lo:lo + batch], truth_ids, scored=False)
            if (lo + batch) % publish_every < batch:
                await _publish(run)
        await _publish(run)
        published = len(run.published)
        flipped = [_record(r.id, r.text, next(n for n in other if n != r.label), "ground_truth")
                   for r in target]
        await _step(run, task, target, set(), extra=flood + flipped, scored=False)
        await _publish(run)
        run.correct = run.answered = 0
        for lo in range(0, len(follow), batch):
            await _step(run, task, follow[lo:lo + batch], set())  # answers only: no learning
        out[name] = {"refused": run.refused, "published_during_attack":
                     len(run.published) - published, "alarms": _alarms(run),
                     "skipped": _skipped(run), "accuracy_after": run.correct / run.answered}
    return out


def run_bench(datasets: Sequence[Path], orders: int, events: int, truth_share: float,
              holdout_share: float, batch: int, publish_every: int, attack: bool,
              poisoned: int, after: int) -> dict[str, Any]:
    from streamcascade.models.datasets import read_stream, stream_task_name
    from streamcascade.models.replay import truth_arrives
    from streamcascade.models.tasks import TASKS

    # The learner's own lines (a refused version, an alarm) are what an attack shows; in the
    # ordinary runs, any of them is a finding.
    logging.getLogger("streamcascade").setLevel(logging.WARNING)
    result: dict[str, Any] = {"bench": "learning-guard", "llm": LLM, "truth_share": truth_share,
                              "holdout_share": holdout_share, "batch": batch,
                              "publish_every": publish_every, "machine": platform.platform(),
                              "streams": {}}
    for dataset in datasets:
        task = TASKS[stream_task_name(dataset)]
        all_rows = read_stream(dataset)
        per_stream: dict[str, Any] = {"ordinary": [], "attack": []}
        for seed in range(orders):
            rows = list(all_rows)
            random.Random(seed).shuffle(rows)  # (the shared IMDB stream is sorted by label)
            rows = rows[:events]
            truth_ids = {r.id for r in rows if truth_arrives(r.id, truth_share)}
            started = time.perf_counter()
            click.echo(f"{dataset.name}, order {seed}: ordinary ...", err=True)
            per_stream["ordinary"].append(asyncio.run(_ordinary(
                task, dataset, rows, truth_ids, seed, holdout_share, batch, publish_every)))
            if attack:
                click.echo(f"{dataset.name}, order {seed}: attack ...", err=True)
                per_stream["attack"].append(asyncio.run(_attack(
                    task, dataset, rows, truth_ids, seed, holdout_share, batch, publish_every,
                    poisoned, after)))
            per_stream.setdefault("seconds", []).append(time.perf_counter() - started)
        ordinary = per_stream["ordinary"]
        per_stream["refused_in_ordinary_runs"] = sum(o["refused"] for o in ordinary)
        per_stream["alarms_in_ordinary_runs"] = sum(o["alarms"] for o in ordinary)
        per_stream["mean_accuracy_change"] = sum(
            o["accuracy"] - o["unguarded_accuracy"] for o in ordinary) / len(ordinary)
        result["streams"][dataset.name] = per_stream
    return result


@click.command("learning-guard")
@click.option("--dataset", "datasets", type=click.Path(exists=True, dir_okay=False,
                                                       path_type=Path),
              multiple=True, required=True, help="A labelled stream with recorded GPT-3.5 "
              "answers (shared format); repeat for several.")
@click.option("--orders", type=click.IntRange(min=1), default=3, show_default=True,
              help="Shuffled orders of each stream.")
@click.option("--events", type=click.IntRange(min=100), default=6000, show_default=True,
              help="Events of each order.")
@click.option("--truth-share", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of events whose ground truth arrives.")
@click.option("--holdout-share", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="The publish gate's held-back share (the worker's default).")
@click.option("--batch", type=click.IntRange(min=1), default=100, show_default=True,
              help="Events answered, then learned, together.")
@click.option("--publish-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Events between two publications.")
@click.option("--attack/--no-attack", default=True, show_default=True,
              help="Also run the poisoning attack on each order.")
@click.option("--poisoned", type=click.IntRange(min=1), default=300, show_default=True,
              help="Events whose ground truth the attack flips.")
@click.option("--after", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Events scored after the attack.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Write the results here (JSON).")
def command(datasets: tuple[Path, ...], orders: int, events: int, truth_share: float,
            holdout_share: float, batch: int, publish_every: int, attack: bool, poisoned: int,
            after: int, json_out: Path) -> None:
    """Whether the learner's guard stays out of ordinary learning, and stops a poisoning."""
    try:
        result = run_bench(datasets, orders, events, truth_share, holdout_share, batch,
                           publish_every, attack, poisoned, after)
    except StreamcascadeError as exc:
        raise click.ClickException(str(exc)) from None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps({name: {k: s[k] for k in ("refused_in_ordinary_runs",
                                                    "alarms_in_ordinary_runs",
                                                    "mean_accuracy_change")}
                           for name, s in result["streams"].items()}, indent=2))
