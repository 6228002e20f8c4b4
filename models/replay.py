"""Replay a labelled stream through a cascade, in process, as a stream, and score it.

Each micro-batch is answered before it is learned from; with ``in_flight`` above 1, that many
micro-batches are answered at once, so that one waiting for a slow LLM answer does not hold up
the ones after it. Learning uses only what the operator would have by then: the LLM's answers to
the events it was asked about (``feedback="llm"``, the paper's setting), the ground-truth labels
of the events already answered (``"ground_truth"``, as if they arrived on a feedback topic), or
both. A labelling team rarely labels every event: ``truth_share`` is the share of events whose
ground truth arrives. Ground truth always scores the run, every event of it.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from streamcascade.models.cascade import Cascade
from streamcascade.models.datasets import StreamRow
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.metrics import accuracy, macro_f1, task_metric
from streamcascade.models.protocol import BatchAnswer
from streamcascade.models.tasks import Task
from streamcascade.models.types import SOURCE_GROUND_TRUTH, Decision, Demonstration, Event

FEEDBACK_MODES = ("llm", "ground_truth", "both")
#: Options a replay gives a stage (by its registry name) unless the user set them. ``lockstep``:
#: a stage that trains in the background takes each snapshot at its point of the stream, as an
#: operator whose training keeps up does; so an event is answered by the snapshot that would be
#: live there, and the replay's figures never depend on how fast the machine trains.
REPLAY_STAGE_OPTIONS: dict[str, dict[str, Any]] = {"finetune": {"lockstep": True}}
#: Figures of a stage that trains in the background, summed over stages at the replay's top level.
_TRAINING_FIGURES = ("train_seconds", "snapshots_published")


def replay_stage_options(stages: Sequence[str],
                         options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``options`` (stage name -> its options) with :data:`REPLAY_STAGE_OPTIONS` added for the
    ``stages`` of the cascade, each where the user did not set it."""
    out = {name: dict(given) for name, given in options.items()}
    for name in stages:
        for key, value in REPLAY_STAGE_OPTIONS.get(name, {}).items():
            out.setdefault(name, {}).setdefault(key, value)
    return out


def truth_arrives(event_id: str, truth_share: float) -> bool:
    """Whether the ground truth of ``event_id`` reaches the cascade, when a labelling team labels
    ``truth_share`` of the events: the same events in every run (a hash of the id, not a draw),
    so a cascade and its baseline, or two points of a sweep, learn from the same labels."""
    return truth_share >= 1.0 or zlib.crc32(event_id.encode()) < truth_share * 2**32


def truth_of(rows: Sequence[StreamRow], task: Task) -> list[int]:
    """The label index of every row; a clear error if a row has no label or an unknown one."""
    out = []
    for row in rows:
        if row.label is None:
            raise ConfigurationError(f"row {row.id} has no label; a replay is scored on labels")
        out.append(task.labels.index(row.label))
    return out


def llm_alone(rows: Sequence[StreamRow], llm: Any) -> list[int | None] | None:
    """The LLM's own answers to every row, when it can give them without calls (recorded)."""
    if not hasattr(llm, "answer_now"):
        return None
    return [llm.answer_now(row.id).label for row in rows]


async def replay_async(rows: Sequence[StreamRow], task: Task, cascade: Cascade, *,
                       feedback: str = "llm", truth_share: float = 1.0, batch_size: int = 1,
                       in_flight: int = 1, progress: bool | str = True) -> dict[str, Any]:
    """Run ``rows`` through ``cascade`` and return the replay's figures (without LLM-alone ones);
    ``in_flight`` micro-batches are answered at once."""
    if in_flight < 1:
        raise ConfigurationError(f"in_flight must be at least 1, got {in_flight}")
    if feedback not in FEEDBACK_MODES:
        raise ConfigurationError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
    if not 0.0 <= truth_share <= 1.0:
        raise ConfigurationError(f"the share of events with ground truth must be within 0..1, "
                                 f"got {truth_share}")
    truth = truth_of(rows, task)
    by_batch: dict[int, list[Decision]] = {}  # each batch's decisions, by its first row
    lost = 0
    bar = tqdm(total=len(rows), desc=progress if isinstance(progress, str) else "replay",
               disable=not progress, unit="ev", mininterval=0.5, leave=False)

    async def answer(lo: int, events: list[Event]) -> tuple[int, list[Event], BatchAnswer]:
        return lo, events, await cascade.answer(events)

    def learn_from(lo: int, events: list[Event], answered: BatchAnswer) -> None:
        nonlocal lost
        lost += unmatched(events, answered.decisions)
        by_batch[lo] = answered.decisions
        demos = answered.demonstrations if feedback != "ground_truth" else []
        if feedback != "llm":
            demos += [Demonstration(e, truth[lo + i], SOURCE_GROUND_TRUTH)
                      for i, e in enumerate(events) if truth_arrives(e.id, truth_share)]
        cascade.learn(demos)
        bar.update(len(events))

    Job = asyncio.Task[tuple[int, list[Event], BatchAnswer]]

    async def learn_from_first(jobs: set[Job]) -> set[Job]:
        """Wait for the first of ``jobs`` to be answered, learn from those done (in stream
        order), and return the others."""
        done, rest = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        for job in sorted(done, key=lambda j: j.result()[0]):
            learn_from(*job.result())
        return rest

    pending: set[Job] = set()
    start = time.perf_counter()
    try:
        for lo in range(0, len(rows), batch_size):
            events = [Event(r.id, r.text) for r in rows[lo:lo + batch_size]]
            pending.add(asyncio.create_task(answer(lo, events)))
            if len(pending) >= in_flight:
                pending = await learn_from_first(pending)
        while pending:
            pending = await learn_from_first(pending)
    finally:
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # A live backend's connections belong to this replay's event loop (each replay, and
        # each sweep point, runs its own): close them with it, not at garbage collection.
        close = getattr(cascade.llm, "aclose", None)
        if close is not None:
            await close()
    bar.close()
    seconds = time.perf_counter() - start
    decisions = [d for lo in sorted(by_batch) for d in by_batch[lo]]
    return score(decisions, truth, task, cascade, seconds, lost=lost)


def unmatched(events: Sequence[Event], decisions: Sequence[Decision]) -> int:
    """Events of a batch without exactly one decision of their own, in their place."""
    if len(decisions) != len(events):
        return len(events)
    return sum(d.event_id != e.id for e, d in zip(events, decisions, strict=True))


def replay(rows: Sequence[StreamRow], task: Task, cascade: Cascade,
           **kwargs: Any) -> dict[str, Any]:
    """Synchronous :func:`replay_async`."""
    return asyncio.run(replay_async(rows, task, cascade, **kwargs))


def score(decisions: Sequence[Decision], truth: Sequence[int], task: Task, cascade: Cascade,
          seconds: float, *, lost: int = 0) -> dict[str, Any]:
    """The figures of a finished replay; ``lost`` events had no decision of their own."""
    n = len(decisions)
    s = len(cascade.stages)
    predicted = [d.label_index for d in decisions]
    positive = task.labels.index(task.positive_label) if task.positive_label else None
    at_llm = np.array([d.stage_index == s for d in decisions])
    audited = np.array([any(p.endswith(":audit") for p in d.path) for d in decisions])
    llm_cost_all = n * cascade.llm_cost
    early = [i for i in range(n) if not at_llm[i]]
    stages: dict[str, Any] = {}
    for j, stage in enumerate(cascade.stages):
        stats: dict[str, Any] = {"share": float(np.mean([d.stage_index == j for d in decisions])),
                                 "cost_per_event": stage.cost}
        for attr in ("predict_seconds", "learn_seconds", "n_predicted", "n_learned",
                     "train_seconds", "wait_seconds", "snapshots_published",
                     "snapshots_declined", "demonstrations_dropped"):
            if hasattr(stage, attr):
                stats[attr] = getattr(stage, attr)
        if stats.get("predict_seconds"):
            stats["predict_events_per_s"] = stats["n_predicted"] / stats["predict_seconds"]
        if stats.get("learn_seconds"):
            stats["learn_events_per_s"] = stats["n_learned"] / stats["learn_seconds"]
        stages[stage.name] = stats
    stages[cascade.llm.name] = {"share": float(at_llm.mean()) if n else 0.0,
                                "cost_per_event": cascade.llm_cost}
    return {
        "n": n,
        "metric": task.metric if task.metric == "accuracy" else f"f1[{task.positive_label}]",
        "quality": task_metric(task.metric, predicted, truth, positive),
        "accuracy": accuracy(predicted, truth),
        "macro_f1": macro_f1(predicted, truth, len(task.labels)),
        "llm_fraction": float(at_llm.mean()) if n else 0.0,
        "llm_call_fraction": float((at_llm | audited).mean()) if n else 0.0,
        "audit_fraction": float(audited.mean()) if n else 0.0,
        "relative_cost": float(sum(d.cost for d in decisions) / llm_cost_all) if n else 0.0,
        "early_answer_accuracy": accuracy([predicted[i] for i in early],
                                          [truth[i] for i in early]) if early else None,
        "unanswered": sum(p is None for p in predicted),
        "degraded": sum(d.degraded for d in decisions),
        "lost": lost,
        **_llm_health(cascade),
        "stages": stages,
        **_training(stages),
        "final_thresholds": [float(t) for t in cascade.controller.thresholds],
        "seconds": seconds,
        "_early_labels": {i: predicted[i] for i in early},
        "events_per_s": n / seconds if seconds else None,
    }


def _training(stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The training time and snapshots published of the stages that train in the background
    (summed), ``None`` when none does."""
    out: dict[str, Any] = {}
    for figure in _TRAINING_FIGURES:
        values = [stats[figure] for stats in stages.values() if figure in stats]
        out[figure] = sum(values) if values else None
    return out


def _llm_health(cascade: Cascade) -> dict[str, Any]:
    """How the live LLM fared (requests hedged, requests cut by their timeout, the whole health
    report); ``None`` for a backend that cannot say (recorded answers never fail that way)."""
    health = cascade.health()
    if not health:
        return {"hedged": None, "timeouts": None, "llm_health": None}
    return {"hedged": health["hedges"], "timeouts": health["timeouts"], "llm_health": health}


def add_llm_alone(result: dict[str, Any], task: Task, llm_answers: Sequence[int | None] | None,
                  truth: Sequence[int]) -> dict[str, Any]:
    """Add the LLM-alone figures on the same events (an unparsed answer is wrong)."""
    if llm_answers is None:
        result.update(llm_quality=None, llm_accuracy=None, quality_vs_llm=None)
        return result
    positive = task.labels.index(task.positive_label) if task.positive_label else None
    result["llm_quality"] = task_metric(task.metric, llm_answers, truth, positive)
    result["llm_accuracy"] = accuracy(llm_answers, truth)
    result["quality_vs_llm"] = result["quality"] - result["llm_quality"]
    # The controller's own guarantee: early answers that differ from what the LLM would have said.
    early = result.get("_early_labels") or {}
    result["disagreement_with_llm"] = (
        sum(label != llm_answers[i] for i, label in early.items()) / len(truth) if truth else 0.0)
    return result


def sweep(rows: Sequence[StreamRow], task: Task, make: Callable[[dict[str, Any]], Cascade],
          points: Sequence[dict[str, Any]], *, feedback: str, truth_share: float = 1.0,
          batch_size: int = 1, in_flight: int = 1, progress: bool = True,
          label: str = "sweep") -> list[dict[str, Any]]:
    """One replay per operating point; ``make(point)`` builds a fresh cascade for each."""
    out = []
    for point in points:
        cascade = make(point)
        desc = f"{label} {point}" if progress else False
        result = replay(rows, task, cascade, feedback=feedback, truth_share=truth_share,
                        batch_size=batch_size, in_flight=in_flight, progress=desc)
        result["point"] = point
        out.append(result)
    return out


def dominance(learned: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]],
              tolerance: float = 0.0) -> dict[str, Any]:
    """Compare the learned curve with the baseline's at each learned point's LLM share.

    Both curves are compared as frontiers: a budget of LLM calls buys the best quality of any
    operating point that spends no more (a higher share can route fewer events), so a point that
    spends more for less is dominated by its own curve, not a fault of the method. The learned
    frontier at a share is the best learned point at that share or below; the baseline's is its
    monotone upper envelope, interpolated between its two nearest points. Only shares inside the
    baseline's range are compared. Each point also keeps its own quality (``learned``) and its
    gap to the baseline (``gap_at_point``), so a point below its own frontier is still seen.
    """
    base = sorted((b["llm_call_fraction"], b["quality"]) for b in baseline)
    xs = np.array([x for x, _ in base])
    ys = np.maximum.accumulate(np.array([y for _, y in base]))
    gaps = []
    for point in learned:
        x = point["llm_call_fraction"]
        if xs.size == 0 or x < xs[0] or x > xs[-1]:
            continue
        frontier = max(p["quality"] for p in learned if p["llm_call_fraction"] <= x)
        at_x = float(np.interp(x, xs, ys))
        gaps.append({"llm_call_fraction": x, "learned": point["quality"],
                     "learned_frontier": frontier, "baseline": at_x, "gap": frontier - at_x,
                     "gap_at_point": point["quality"] - at_x})
    return {"compared": len(gaps),
            "learned_at_least_baseline": all(g["gap"] >= -tolerance for g in gaps),
            "min_gap": min((g["gap"] for g in gaps), default=None),
            "min_gap_at_point": min((g["gap_at_point"] for g in gaps), default=None),
            "points": gaps}
