"""Quality metrics over label indices, where a missing answer (``None``) is always wrong.

>>> accuracy([0, 1, None], [0, 1, 1])
0.6666666666666666
>>> f1_of_class([1, 1, 0, None], [1, 0, 0, 1], positive=1)
0.5
"""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(predicted: Sequence[int | None], truth: Sequence[int]) -> float:
    """Share of events answered with the true label."""
    _same_length(predicted, truth)
    if not truth:
        return 0.0
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def f1_of_class(predicted: Sequence[int | None], truth: Sequence[int], positive: int) -> float:
    """The F1 score of one class (0 when the class is neither predicted nor present)."""
    _same_length(predicted, truth)
    tp = fp = fn = 0
    for p, t in zip(predicted, truth, strict=True):
        if p == positive and t == positive:
            tp += 1
        elif p == positive:
            fp += 1
        elif t == positive:
            fn += 1
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(predicted: Sequence[int | None], truth: Sequence[int], n_classes: int) -> float:
    """The unweighted mean of every class's F1."""
    return sum(f1_of_class(predicted, truth, c) for c in range(n_classes)) / n_classes


def task_metric(
    metric: str, predicted: Sequence[int | None], truth: Sequence[int], positive: int | None
) -> float:
    """The task's headline metric: ``"accuracy"``, or ``"f1"`` of the positive class."""
    if metric == "accuracy":
        return accuracy(predicted, truth)
    if metric == "f1":
        if positive is None:
            raise ValueError("the f1 metric needs a positive label")
        return f1_of_class(predicted, truth, positive)
    raise ValueError(f"unknown metric {metric!r}; expected 'accuracy' or 'f1'")


def _same_length(predicted: Sequence[object], truth: Sequence[object]) -> None:
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
