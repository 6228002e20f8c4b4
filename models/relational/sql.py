"""Lowering relations to SQL: one common table expression per node, in DuckDB's dialect.

Every engine runs the same generated text: DuckDB as it is, others through sqlglot's transpiler
(:func:`transpile`). Each node becomes ``rN(keys..., v)``; a node used by several others (a
forward relation its backward pass reads again) is one expression, referenced by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from streamcascade.models.relational.ir import (
    Add,
    Const,
    Join,
    Map,
    Rel,
    Sum,
    Table,
    literal,
    topological,
)


def _columns(prefix: str, keys: tuple[str, ...]) -> list[str]:
    return [f"{prefix}{k}" for k in keys]


def _body(node: Rel, name_of: Mapping[int, str]) -> str:
    keys = list(node.keys)
    if isinstance(node, Table):
        where = f" WHERE {node.where}" if node.where else ""
        return f"SELECT {', '.join([*keys, f'{node.value} AS v'])} FROM {node.name}{where}"
    if isinstance(node, Const):
        return f"SELECT {literal(node.value)} AS v"
    if isinstance(node, Map):
        child = name_of[id(node.child)]
        return f"SELECT {', '.join([*keys, node.kernel.sql('v') + ' AS v'])} FROM {child}"
    if isinstance(node, Join):
        left, right = name_of[id(node.left)], name_of[id(node.right)]
        extra = [k for k in node.right.keys if k not in node.left.keys]
        select = [*_columns("a.", node.left.keys), *_columns("b.", tuple(extra)),
                  node.kernel.sql("a.v", "b.v") + " AS v"]
        if node.shared:
            on = " AND ".join(f"a.{k} = b.{k}" for k in node.shared)
            return f"SELECT {', '.join(select)} FROM {left} a JOIN {right} b ON {on}"
        return f"SELECT {', '.join(select)} FROM {left} a CROSS JOIN {right} b"
    if isinstance(node, Sum):
        child = name_of[id(node.child)]
        if not keys:  # one total, zero over no tuples (SUM alone would give NULL)
            return f"SELECT COALESCE(SUM(v), {literal(0.0)}) AS v FROM {child}"
        group = ", ".join(keys)
        return f"SELECT {group}, SUM(v) AS v FROM {child} GROUP BY {group}"
    if isinstance(node, Add):
        parts = " UNION ALL ".join(
            f"SELECT {', '.join([*keys, 'v'])} FROM {name_of[id(p)]}" for p in node.parts)
        if not keys:
            return f"SELECT COALESCE(SUM(v), {literal(0.0)}) AS v FROM ({parts}) u"
        group = ", ".join(keys)
        return f"SELECT {group}, SUM(v) AS v FROM ({parts}) u GROUP BY {group}"
    raise TypeError(f"cannot lower {type(node).__name__}")


def lower(outputs: Mapping[str, Rel]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The common table expressions the outputs need, ``(name, query)`` in dependency order, and
    the name that holds each output."""
    name_of: dict[int, str] = {}
    ctes: list[tuple[str, str]] = []
    for node in topological(outputs.values()):
        name = f"r{len(ctes)}"
        ctes.append((name, _body(node, name_of)))
        name_of[id(node)] = name
    return ctes, {label: name_of[id(node)] for label, node in outputs.items()}


def with_clause(ctes: list[tuple[str, str]]) -> str:
    return "WITH " + ",\n".join(f"{name} AS ({body})" for name, body in ctes)


def select(rel: Rel) -> str:
    """A query returning the tuples of ``rel``: ``keys..., v``."""
    ctes, names = lower({"out": rel})
    return f"{with_clause(ctes)}\nSELECT * FROM {names['out']}"


@lru_cache(maxsize=256)
def transpile(sql: str, dialect: str) -> str:
    """``sql`` (DuckDB's dialect) in ``dialect``.

    One function means different things: DuckDB's one-argument ``LOG`` is base 10, Spark's the
    natural logarithm, and the transpiler keeps the name. The generated SQL uses ``LN`` only; a
    ``LOG(x)`` met here is rewritten as ``LN(x) / LN(10)``, DuckDB's meaning, before it is
    written out.
    """
    if dialect == "duckdb":
        return sql
    import sqlglot
    from sqlglot import exp

    def base10(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Log) and node.args.get("expression") is None:
            ten = exp.Ln(this=exp.Literal.number(10))
            return exp.Div(this=exp.Ln(this=node.this), expression=ten)
        return node

    tree = sqlglot.parse_one(sql, read="duckdb").transform(base10)
    return tree.sql(dialect=dialect)
