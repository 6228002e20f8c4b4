"""How far can one stage take the cascade on a stream? A hindsight bound on deferring after it.

A learned policy can only be as good as what it reads. This runs the first stage over the stream
as the cascade would, answering each event before learning from it, but learning from the LLM's
answer to *every* event (more labels than any cascade gives it: one that answers early does not
ask the LLM). Then, with the whole stream in hand, it scores two ways of choosing which events go
to the LLM, at every share of events sent there:

``confidence``
    the stage's least sure answers go (the static baseline's rule, with the best threshold for
    each share);
``hindsight_policy``
    events go in order of how often the stage disagreed with the LLM, over the whole stream, on
    events like them: same class said, same decile of the stage's top probability, same quartile
    of the text's length (the inputs the deferral policy reads). An online policy that reads
    those inputs estimates such rates from the LLM's answers as the stream goes, for a stage
    taught fewer of them; this one knows them from the start.

Every event not sent takes the stage's answer; every event sent takes the LLM's. The quality is
measured against ground truth, as a replay's is. A share at which even the hindsight policy
loses more than a point is out of this stage's reach: the cascade needs a better stage there, not
a better policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from streamcascade.models.datasets import StreamRow
from streamcascade.models.metrics import task_metric
from streamcascade.models.stages.base import Stage
from streamcascade.models.tasks import Task

RULES = ("confidence", "hindsight_policy")
_TOP_BINS, _LENGTH_BINS = 10, 4


def _quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def prequential(rows: Sequence[StreamRow], stage: Stage, llm_answers: Sequence[int | None],
                progress: bool = True) -> np.ndarray:
    """The stage's probabilities for each row, each taken before it learns the row's LLM answer
    (rows the LLM left unanswered teach nothing)."""
    proba = np.zeros((len(rows), len(stage.labels)))
    for i, row in enumerate(tqdm(rows, desc="headroom", disable=not progress, unit="ev",
                                 mininterval=0.5, leave=False)):
        proba[i] = stage.predict_proba([row.text])[0]
        if llm_answers[i] is not None:
            stage.learn([row.text], [int(llm_answers[i])])  # type: ignore[arg-type]
    return proba


def answer_order(rule: str, proba: np.ndarray, lengths: np.ndarray,
                 llm_answers: np.ndarray) -> np.ndarray:
    """Event indices, the first to keep at the stage first, under ``rule``."""
    said, top = proba.argmax(axis=1), proba.max(axis=1)
    if rule == "confidence":
        return np.argsort(-top, kind="stable")
    if rule != "hindsight_policy":
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    cell = (said * _TOP_BINS + _quantile_bins(top, _TOP_BINS)) * _LENGTH_BINS \
        + _quantile_bins(np.log1p(lengths), _LENGTH_BINS)
    answered = llm_answers >= 0
    n_cells = int(cell.max()) + 1
    judged = np.bincount(cell[answered], minlength=n_cells)
    differed = np.bincount(cell[answered], weights=(said != llm_answers)[answered],
                           minlength=n_cells)
    rate = np.where(judged > 0, differed / np.maximum(judged, 1), 1.0)
    return np.lexsort((-top, rate[cell]))  # lowest disagreement first, surer first within


def headroom(rows: Sequence[StreamRow], task: Task, stage: Stage,
             llm_answers: Sequence[int | None], truth: Sequence[int], within: float = 0.01,
             progress: bool = True) -> dict[str, Any]:
    """The curves and the smallest share of events to the LLM within ``within`` of its quality."""
    positive = task.labels.index(task.positive_label) if task.positive_label else None
    proba = prequential(rows, stage, llm_answers, progress)
    said = proba.argmax(axis=1)
    llm = np.array([-1 if a is None else a for a in llm_answers])
    lengths = np.array([len(r.text) for r in rows], dtype=np.float64)

    def quality(predicted: np.ndarray) -> float:
        return task_metric(task.metric, [None if p < 0 else int(p) for p in predicted], truth,
                           positive)

    llm_quality = quality(llm)
    n = len(rows)
    out: dict[str, Any] = {
        "stage": stage.name, "n": n, "within": within, "llm_quality": llm_quality,
        "stage_alone_quality": quality(said),
        "agreement_with_llm": float(np.mean(said[llm >= 0] == llm[llm >= 0])),
        # The fewest events a policy must send to give the LLM's answer on every event.
        "disagreement_share": float(np.mean(said != llm)),
        "curves": {}, "min_llm_share_within": {},
    }
    for rule in RULES:
        order = answer_order(rule, proba, lengths, llm)
        curve = []
        for pct in range(0, 101):
            kept = order[: round(n * (100 - pct) / 100)]
            predicted = llm.copy()
            predicted[kept] = said[kept]
            q = quality(predicted)
            curve.append({"llm_share": pct / 100, "quality": q, "quality_vs_llm": q - llm_quality})
        out["curves"][rule] = curve
        ok = [p["llm_share"] for p in curve if p["quality_vs_llm"] >= -within]
        out["min_llm_share_within"][rule] = min(ok) if ok else None
    return out
