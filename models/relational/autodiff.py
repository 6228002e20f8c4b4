"""Reverse-mode differentiation of a relational computation, into relational computations.

The paper's rules, one per operator, each a relation-Jacobian product written with the same
operators as the forward pass (``d`` is the gradient relation of the operator's output):

``Map(R, f)``        ``Join(d, R, d*f'(r))``: a join on all keys (a kernel with a constant
                     derivative scales ``d`` instead);
``Join(L, R, g)``    per side, ``Join(d, other, d*dg)`` (or ``d`` scaled, for a constant partial),
                     summed over the keys the side lacks: two joins and an aggregation;
``Sum(R, by)``       ``Join(R, d, second)``: each tuple of ``R`` gets its group's gradient (a
                     constant ``d``, the loss's own, is written on ``R``'s keys without a join);
``Add(R1, R2...)``   ``Join(Ri, d, second)`` for each part.

Rules apply from the loss back, in reverse topological order; where a relation feeds several
operators, its gradient is the ``Add`` of their contributions. Only nodes that depend on a
requested parameter are differentiated.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.models.relational.ir import (
    Add,
    Const,
    Join,
    Map,
    Rel,
    Sum,
    binary,
    fill,
    scale,
    topological,
    unary,
)


def gradients(loss: Rel, wrt: Sequence[Rel]) -> dict[Rel, Rel | None]:
    """The gradient relation of ``loss`` (a relation without keys) for each node in ``wrt``,
    with the node's keys; ``None`` where the loss does not depend on it."""
    if loss.keys:
        raise ValueError(f"the loss must be one total (no keys), not keyed by {loss.keys}")
    order = topological([loss])
    targets = {id(node) for node in wrt}
    depends: set[int] = set()
    for node in order:
        if id(node) in targets or any(id(c) in depends for c in node.inputs()):
            depends.add(id(node))
    incoming: dict[int, list[Rel]] = {id(loss): [Const(1.0)]}
    found: dict[int, Rel] = {}
    for node in reversed(order):
        parts = incoming.pop(id(node), None)
        if not parts:
            continue
        grad = parts[0] if len(parts) == 1 else Add(tuple(parts))
        found[id(node)] = grad
        for child, contribution in _backward(node, grad):
            if id(child) in depends:
                incoming.setdefault(id(child), []).append(contribution)
    return {node: found.get(id(node)) for node in wrt}


def _reduce(term: Rel, keys: tuple[str, ...]) -> Rel:
    """``term`` summed down to ``keys`` (nothing to do where it already has exactly them)."""
    return term if set(term.keys) == set(keys) else Sum(term, keys)


def _backward(node: Rel, grad: Rel) -> list[tuple[Rel, Rel]]:
    """``(input, its share of the gradient)`` for each input of ``node``."""
    if isinstance(node, Map):
        kernel = node.kernel
        if kernel.grad is None:
            raise ValueError(f"kernel {kernel.name!r} has no known derivative")
        if kernel.grad_on_d:
            return [(node.child, Map(grad, unary(kernel.grad)))]
        return [(node.child, Join(grad, node.child, binary(kernel.grad)))]
    if isinstance(node, Join):
        if not node.kernel.partials:
            raise ValueError(f"kernel {node.kernel.name!r} has no known partial derivatives")
        out = []
        for side, other, rule in ((node.left, node.right, node.kernel.partials[0]),
                                  (node.right, node.left, node.kernel.partials[1])):
            if rule is None:
                continue
            kind, arg = rule
            if kind == "scale":
                term: Rel = grad if float(arg) == 1.0 else Map(grad, scale(float(arg)))
            else:
                term = Join(grad, other, binary(str(arg)))
            out.append((side, _reduce(term, side.keys)))
        return out
    if isinstance(node, Sum):
        if isinstance(grad, Const):
            return [(node.child, Map(node.child, fill(grad.value)))]
        return [(node.child, Join(node.child, grad, binary("second")))]
    if isinstance(node, Add):
        return [(part, Join(part, grad, binary("second"))) for part in node.parts]
    return []
