"""Replay a labelled stream through a compiled program, in process, and score it.

Each micro-batch is answered before anything about it is learned; the ground truth of a fixed
share of the events (the same events in every run, see :func:`~..replay.truth_arrives`) arrives
``truth_delay`` events after its event was answered, as from a labelling team that is behind the
stream. The run is scored on every event's ground truth; an event answered with an error counts
as wrong.

With ``oracle``, every event is also answered by every combination of backends the program could
have chosen for it, at that moment (the stages as they were), without learning or paying: the
hindsight oracle picks, per event, the cheapest combination that answers correctly, if any does.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from streamcascade.models.datasets import StreamRow
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.metrics import task_metric
from streamcascade.models.programs.runtime import CompiledProgram
from streamcascade.models.replay import truth_arrives, truth_of
from streamcascade.models.tasks import Task
from streamcascade.models.types import SOURCE_GROUND_TRUTH, Decision, Demonstration, Event

#: Events per window of the realised-cost series.
COST_WINDOW = 1000


def positive_of(task: Task) -> int | None:
    return task.labels.index(task.positive_label) if task.positive_label else None


def quality_of(task: Task, predicted: Sequence[int | None], truth: Sequence[int]) -> float:
    return task_metric(task.metric, predicted, truth, positive_of(task))


async def replay_program_async(rows: Sequence[StreamRow], task: Task, model: CompiledProgram,
                               *, truth_share: float = 1.0, truth_delay: int = 0,
                               batch_size: int = 16, oracle: bool = False,
                               progress: bool | str = True) -> dict[str, Any]:
    """Run ``rows`` through ``model``, learning from their ground truth; the run's figures."""
    if not 0.0 <= truth_share <= 1.0:
        raise ConfigurationError(f"the share of events with ground truth must be within 0..1, "
                                 f"got {truth_share}")
    if truth_delay < 0 or batch_size < 1:
        raise ConfigurationError("truth_delay must be >= 0 and batch_size >= 1")
    truth = truth_of(rows, task)
    decisions: list[Decision] = []
    best: list[tuple[int | None, float]] = []
    waiting: deque[tuple[int, list[Demonstration]]] = deque()
    warm_until: int | None = None
    bar = tqdm(total=len(rows), desc=progress if isinstance(progress, str) else "program",
               disable=not progress, unit="ev", mininterval=0.5, leave=False)
    start = time.perf_counter()
    for lo in range(0, len(rows), batch_size):
        batch = rows[lo:lo + batch_size]
        events = [Event(r.id, r.text) for r in batch]
        answered = await model.answer(events)
        decisions.extend(answered.decisions)
        if oracle:
            for i, event in enumerate(events):
                best.append(_hindsight(await model.outcomes(event), truth[lo + i], task))
        done = lo + len(batch)
        waiting.append((done + truth_delay, [
            Demonstration(e, truth[lo + i], SOURCE_GROUND_TRUTH)
            for i, e in enumerate(events) if truth_arrives(e.id, truth_share)]))
        while waiting and waiting[0][0] <= done:
            model.learn(waiting.popleft()[1])
        if warm_until is None and not model.warming_up:
            warm_until = done
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    result = score(decisions, truth, task, model, seconds, warm_until)
    if oracle:
        result["oracle_quality"] = quality_of(task, [label for label, _ in best], truth)
        result["oracle_cost_per_event"] = float(np.mean([cost for _, cost in best]))
    return result


def replay_program(rows: Sequence[StreamRow], task: Task, model: CompiledProgram,
                   **kwargs: Any) -> dict[str, Any]:
    """Synchronous :func:`replay_program_async`."""
    return asyncio.run(replay_program_async(rows, task, model, **kwargs))


def _hindsight(outcomes: list[tuple[int | None, float]], truth: int,
               task: Task) -> tuple[int | None, float]:
    """The oracle's answer for one event: the cheapest correct one, else the cheapest wrong
    one (for F1, a wrong answer that is not the positive class where one exists)."""
    right = [o for o in outcomes if o[0] == truth]
    if right:
        return min(right, key=lambda o: o[1])
    positive = positive_of(task)
    harmless = [o for o in outcomes if o[0] != positive]
    return min(harmless or outcomes, key=lambda o: o[1])


def score(decisions: Sequence[Decision], truth: Sequence[int], task: Task,
          model: CompiledProgram, seconds: float, warm_until: int | None) -> dict[str, Any]:
    """The figures of a finished program replay."""
    n = len(decisions)
    predicted = [d.label_index for d in decisions]
    costs = np.array([d.cost for d in decisions])
    windows = [float(costs[lo:lo + COST_WINDOW].mean())
               for lo in range(0, n - COST_WINDOW + 1, COST_WINDOW)]
    calls = Counter(step for d in decisions for step in d.path)
    return {
        "n": n,
        "metric": task.metric if task.metric == "accuracy" else f"f1[{task.positive_label}]",
        "quality": quality_of(task, predicted, truth),
        "cost_per_event": float(costs.mean()) if n else 0.0,
        "backend_calls": dict(sorted(calls.items())),
        "errors": sum(d.error is not None for d in decisions),
        "error_examples": sorted({d.error for d in decisions if d.error})[:5],
        "cost_windows": windows,
        "warmup_events": warm_until,
        "lambda": model.controller.lam,
        "policy_updates": {site: p.n_updates for site, p in sorted(model.policies.items())},
        "seconds": seconds,
        "events_per_s": n / seconds if seconds else None,
    }


def windows_on_budget(result: dict[str, Any], budget: float,
                      tolerance: float = 0.1) -> dict[str, Any]:
    """How the realised cost of each full window that starts after the warm-up compares with
    ``budget``: the largest relative deviation, and whether all are within ``tolerance``."""
    start = result.get("warmup_events") or 0
    first = -(-start // COST_WINDOW)  # the first window that starts after the warm-up
    after = result["cost_windows"][first:]
    deviations = [abs(w - budget) / budget for w in after] if budget > 0 else []
    return {"windows": len(after), "max_deviation": max(deviations, default=None),
            "all_within": bool(deviations) and max(deviations) <= tolerance,
            "tolerance": tolerance}
