"""Relations of keyed scalars, and the operators a model is written in.

This is the representation of Tang et al. (ICML 2023, *Auto-Differentiation of Relational
Computations for Very Large Scale Machine Learning*): a tensor is a relation of tuples
``(k1, ..., kn, v)``, integer keys and one DOUBLE value, and a model's forward computation is a
query over such relations. A missing tuple is no value at all, not a zero: joins are inner joins,
so a relation must hold every key the model reads (a parameter relation holds each feature of the
data with every class, at zero to start).

Operators (each node is one sub-query; a node used twice is computed once):

``Table``   a stored relation (data or parameters), optionally filtered to one batch;
``Const``   the one tuple without keys;
``Map``     the paper's selection with a kernel: ``f(v)``, keys unchanged;
``Join``    the natural join on the key names both sides share, valued ``g(left.v, right.v)``;
``Sum``     the aggregation, grouped by some of the keys (none: one total);
``Add``     relations with the same keys summed tuple by tuple (union, then sum): how gradients
            that reach a relation along several paths accumulate.

Kernels come from a whitelist whose derivatives are known (:data:`UNARY`, :data:`BINARY`). Their
SQL is written with ``LN`` and ``EXP`` only, never ``LOG``, whose base differs between engines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def literal(value: float) -> str:
    """A DOUBLE literal in every dialect (``0.5`` alone is a DECIMAL in DuckDB and Spark)."""
    return format(float(value), ".17e")


@dataclass(frozen=True)
class Kernel:
    """A whitelisted function of one value (``{0}``) or two (``{0}``, ``{1}``) as SQL.

    For a unary kernel, ``grad`` names how the gradient ``d`` of its output becomes its input's:
    a binary kernel of ``(d, input)`` that is joined with the input, or (``grad_on_d``) a unary
    kernel of ``d`` alone where the derivative is a constant. For a binary kernel, ``partials``
    holds one rule per operand: ``None`` (no gradient flows), ``("scale", c)`` (``c * d``), or
    ``("join", name)`` (a binary kernel of ``(d, other operand)``, joined with the other).
    """

    name: str
    template: str
    grad: str | None = None
    grad_on_d: bool = False
    partials: tuple[tuple[str, str | float] | None, ...] = ()

    def sql(self, *operands: str) -> str:
        return self.template.format(*operands)


def scale(c: float) -> Kernel:
    """``c * v``: its gradient is the gradient scaled by ``c``."""
    return Kernel(f"scale({c!r})", f"({{0}} * {literal(c)})", grad=f"scale({c!r})", grad_on_d=True)


UNARY: dict[str, Kernel] = {k.name: k for k in (
    Kernel("exp", "EXP({0})", grad="d_exp"),
    Kernel("ln", "LN({0})", grad="d_ln"),
    Kernel("neg", "(-{0})", grad="neg", grad_on_d=True),
    Kernel("square", "({0} * {0})", grad="d_square"),
    Kernel("softplus", "(GREATEST({0}, 0) + LN(1 + EXP(-ABS({0}))))", grad="d_softplus"),
    Kernel("sigmoid", "(1 / (1 + EXP(-{0})))", grad="d_sigmoid"),
)}

BINARY: dict[str, Kernel] = {k.name: k for k in (
    Kernel("mul", "({0} * {1})", partials=(("join", "mul"), ("join", "mul"))),
    Kernel("add", "({0} + {1})", partials=(("scale", 1.0), ("scale", 1.0))),
    Kernel("sub", "({0} - {1})", partials=(("scale", 1.0), ("scale", -1.0))),
    # The right operand's value on the left operand's keys: the backward of an aggregation.
    Kernel("second", "{1}", partials=(None, ("scale", 1.0))),
    # Derivatives of the unary kernels, as functions of (gradient, input); not differentiated.
    Kernel("d_exp", "({0} * EXP({1}))"),
    Kernel("d_ln", "({0} / {1})"),
    Kernel("d_square", "(2 * {0} * {1})"),
    Kernel("d_softplus", "({0} / (1 + EXP(-{1})))"),
    Kernel("d_sigmoid", "({0} * EXP(-{1}) / ((1 + EXP(-{1})) * (1 + EXP(-{1}))))"),
)}


def fill(c: float) -> Kernel:
    """The constant ``c`` on every tuple: a relation's keys valued ``c`` (no gradient flows)."""
    return Kernel(f"fill({c!r})", literal(c))


def unary(name: str) -> Kernel:
    if name.startswith("scale("):
        return scale(float(name[len("scale("):-1]))
    if name not in UNARY:
        raise ValueError(f"kernel {name!r} is not a whitelisted unary kernel: {sorted(UNARY)}")
    return UNARY[name]


def binary(name: str) -> Kernel:
    if name not in BINARY:
        raise ValueError(f"kernel {name!r} is not a whitelisted binary kernel: {sorted(BINARY)}")
    return BINARY[name]


@dataclass(frozen=True, eq=False)
class Rel:
    """A relation: key column names, and how it is computed (subclasses)."""

    def inputs(self) -> tuple[Rel, ...]:
        return ()

    @property
    def keys(self) -> tuple[str, ...]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Table(Rel):
    """Stored tuples: ``value`` is an SQL expression over the table's columns; ``where`` an
    optional filter (it may name parameters such as ``$batch``)."""

    name: str
    key_names: tuple[str, ...]
    value: str = "v"
    where: str | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.key_names


@dataclass(frozen=True, eq=False)
class Const(Rel):
    """The single tuple without keys."""

    value: float = 1.0

    @property
    def keys(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, eq=False)
class Map(Rel):
    child: Rel
    kernel: Kernel

    def inputs(self) -> tuple[Rel, ...]:
        return (self.child,)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.child.keys


@dataclass(frozen=True, eq=False)
class Join(Rel):
    """Left keys first, then the right's keys the left lacks."""

    left: Rel
    right: Rel
    kernel: Kernel

    def inputs(self) -> tuple[Rel, ...]:
        return (self.left, self.right)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.left.keys + tuple(k for k in self.right.keys if k not in self.left.keys)

    @property
    def shared(self) -> tuple[str, ...]:
        return tuple(k for k in self.left.keys if k in self.right.keys)


@dataclass(frozen=True, eq=False)
class Sum(Rel):
    child: Rel
    by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = set(self.by) - set(self.child.keys)
        if missing:
            raise ValueError(f"cannot group by {sorted(missing)}: keys are {self.child.keys}")

    def inputs(self) -> tuple[Rel, ...]:
        return (self.child,)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.by


@dataclass(frozen=True, eq=False)
class Add(Rel):
    parts: tuple[Rel, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.parts or any(set(p.keys) != set(self.parts[0].keys) for p in self.parts):
            raise ValueError("Add needs one or more relations with the same keys")

    def inputs(self) -> tuple[Rel, ...]:
        return self.parts

    @property
    def keys(self) -> tuple[str, ...]:
        return self.parts[0].keys


def topological(outputs: Iterable[Rel]) -> list[Rel]:
    """Every node the outputs need, each after its inputs, each once."""
    order: list[Rel] = []
    seen: set[int] = set()
    stack: list[tuple[Rel, bool]] = [(node, False) for node in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.inputs()) if id(child) not in seen)
    return order


def mul(left: Rel, right: Rel) -> Join:
    return Join(left, right, BINARY["mul"])


def sub(left: Rel, right: Rel) -> Join:
    return Join(left, right, BINARY["sub"])


def apply(child: Rel, kernel: str) -> Map:
    return Map(child, unary(kernel))


def total(child: Rel, by: Sequence[str] = ()) -> Sum:
    return Sum(child, tuple(by))
