"""The cascade's models, written as relational computations.

Each model reads a feature relation ``X(e, f)``, a parameter relation ``W`` and label relations,
and returns its loss: a relation without keys. Per-event weights (``wt``, e.g. one over the batch
size) are data, so one query serves a batch and the whole set alike. (An L2 penalty is the
optimiser's, see :mod:`.driver`: its gradient needs no query.)

``softmax_regression``
    The first stage (and the encoder stage's head: an embedding is a feature relation whose
    features are its dimensions): ``Z(e, c) = sum_f X(e, f) W(f, c)``, then the cross-entropy
    ``sum_e wt_e (ln sum_c exp Z(e, c) - Z(e, y_e))``. ``Y(e, c)`` holds ``wt_e`` at the true
    class only. A bias is a feature every event has, at 1.
``logistic_regression``
    The deferral policy: ``z(e) = sum_f X(e, f) W(f)``, then
    ``sum_e wt_e (softplus z(e) - t_e z(e))`` for a target ``t_e`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcascade.models.relational.ir import Rel, Table, apply, mul, sub, total


@dataclass(frozen=True)
class Tables:
    """Where a model's data lives: table names and an optional filter (one batch)."""

    x: str
    y: str
    weights: str
    where: str | None = None


def softmax_regression(t: Tables) -> tuple[Rel, Table]:
    """The cross-entropy of a softmax regression, and its parameter relation ``W(f, c)``.

    Tables: ``x(e, f, v)``, ``y(e, c, wt)`` (the true class of each event), ``weights(f, c, v)``.
    """
    x = Table(t.x, ("e", "f"), "v", t.where)
    y = Table(t.y, ("e", "c"), "wt", t.where)
    w = Table(t.weights, ("f", "c"))
    logits = total(mul(x, w), ("e", "c"))
    log_partition = apply(total(apply(logits, "exp"), ("e",)), "ln")
    event_weight = total(y, ("e",))
    true_logit = total(mul(logits, y), ("e",))
    return total(sub(mul(log_partition, event_weight), true_logit)), w


def logistic_regression(t: Tables) -> tuple[Rel, Table]:
    """The weighted log loss of a logistic regression, and its parameter relation ``W(f)``.

    Tables: ``x(e, f, v)``, ``y(e, t, wt)`` (target in [0, 1]), ``weights(f, v)``.
    """
    x = Table(t.x, ("e", "f"), "v", t.where)
    target = Table(t.y, ("e",), "t * wt", t.where)
    event_weight = Table(t.y, ("e",), "wt", t.where)
    w = Table(t.weights, ("f",))
    z = total(mul(x, w), ("e",))
    return total(sub(mul(apply(z, "softplus"), event_weight), mul(z, target))), w
