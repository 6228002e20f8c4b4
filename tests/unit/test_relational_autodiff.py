"""The relational representation, its derived backward pass, and the SQL it is lowered to."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from streamcascade.models.relational import models, reference
from streamcascade.models.relational.autodiff import gradients
from streamcascade.models.relational.engines import DuckDBEngine
from streamcascade.models.relational.ir import (
    BINARY,
    UNARY,
    Join,
    Map,
    Table,
    apply,
    scale,
    total,
)
from streamcascade.models.relational.sql import lower, select, transpile


@pytest.fixture(scope="module")
def duck() -> DuckDBEngine:
    return DuckDBEngine(threads=1)


def softmax_data(seed: int = 0, n: int = 30, n_features: int = 12, k: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    keys = np.unique(np.repeat(np.arange(n), 4) * n_features + rng.integers(0, n_features, 4 * n))
    e, f = keys // n_features, keys % n_features
    domain = np.unique(f)
    return {"x": {"e": e, "f": f, "v": rng.random(e.size)},
            "y": {"e": np.arange(n), "c": rng.integers(0, k, n), "wt": rng.random(n) / n},
            "w": {"f": np.repeat(domain, k), "c": np.tile(np.arange(k), domain.size),
                  "v": rng.normal(size=domain.size * k)}, "n": n}


def logistic_data(seed: int = 0, n: int = 25, d: int = 6) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return {"x": {"e": np.repeat(np.arange(n), d), "f": np.tile(np.arange(d), n), "v": x.ravel()},
            "y": {"e": np.arange(n), "t": rng.random(n), "wt": rng.random(n) / n},
            "w": {"f": np.arange(d), "v": rng.normal(size=d)}, "n": n}


def sorted_by(columns: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    return columns["v"][np.lexsort([columns[k] for k in reversed(keys)])]


@pytest.mark.parametrize(("build", "data", "check", "keys"), [
    (models.softmax_regression, softmax_data, reference.softmax_regression, ("f", "c")),
    (models.logistic_regression, logistic_data, reference.logistic_regression, ("f",)),
])
def test_derived_gradient_and_loss_match_numpy(duck: DuckDBEngine, build: Any, data: Any,
                                               check: Any, keys: tuple[str, ...]) -> None:
    d = data()
    for name in ("x", "y", "w"):
        duck.put(f"t_{name}", d[name])
    loss, w = build(models.Tables("t_x", "t_y", "t_w"))
    grad = gradients(loss, [w])[w]
    assert grad is not None and set(grad.keys) == set(keys)
    expected_loss, expected = check(d["x"], d["y"], d["w"], d["n"])
    assert duck.fetch(select(loss))["v"][0] == pytest.approx(expected_loss, rel=1e-12)
    got = duck.fetch(select(grad))
    np.testing.assert_allclose(sorted_by(got, keys), sorted_by(expected, keys), rtol=1e-10,
                               atol=1e-14)


def _central_difference(duck: DuckDBEngine, loss_sql: str, table: str,
                        columns: dict[str, np.ndarray],
                        row: int, h: float = 1e-6) -> float:
    values = []
    for sign in (1, -1):
        moved = {**columns, "v": columns["v"].copy()}
        moved["v"][row] += sign * h
        duck.put(table, moved)
        values.append(duck.fetch(loss_sql)["v"][0])
    duck.put(table, columns)
    return float((values[0] - values[1]) / (2 * h))


@pytest.mark.parametrize("kernel", [*sorted(UNARY), "scale"])
def test_every_unary_kernel_derivative_matches_finite_differences(duck: DuckDBEngine,
                                                                  kernel: str) -> None:
    # ln needs positive values; the others are checked around zero, on both sides.
    v = np.array([0.3, 1.7, 0.9]) if kernel == "ln" else np.array([-1.3, 0.2, 2.1])
    columns = {"i": np.arange(3), "v": v}
    duck.put("k_w", columns)
    w = Table("k_w", ("i",))
    node = Map(w, scale(-2.5)) if kernel == "scale" else apply(w, kernel)
    loss = total(Join(node, Table("k_c", ("i",)), BINARY["mul"]))
    duck.put("k_c", {"i": np.arange(3), "v": np.array([0.5, -1.0, 2.0])})
    grad = gradients(loss, [w])[w]
    assert grad is not None
    got = sorted_by(duck.fetch(select(grad)), ("i",))
    for row in range(3):
        fd = _central_difference(duck, select(loss), "k_w", columns, row)
        assert got[row] == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kernel", ["mul", "add", "sub"])
def test_join_kernels_broadcast_and_sum_back(duck: DuckDBEngine, kernel: str) -> None:
    # A(i, j) joined with B(j): B's gradient sums over i, A's is per tuple.
    rng = np.random.default_rng(1)
    a = {"i": np.repeat(np.arange(3), 2), "j": np.tile(np.arange(2), 3), "v": rng.normal(size=6)}
    b = {"j": np.arange(2), "v": rng.normal(size=2)}
    duck.put("j_a", a)
    duck.put("j_b", b)
    ta, tb = Table("j_a", ("i", "j")), Table("j_b", ("j",))
    loss = total(apply(Join(ta, tb, BINARY[kernel]), "square"))
    grads = gradients(loss, [ta, tb])
    for table, rel, columns, keys in (("j_a", ta, a, ("i", "j")), ("j_b", tb, b, ("j",))):
        derived = grads[rel]
        assert derived is not None
        got = sorted_by(duck.fetch(select(derived)), keys)
        for row in range(len(columns["v"])):
            fd = _central_difference(duck, select(loss), table, columns, row)
            assert got[row] == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_gradient_is_none_for_a_relation_the_loss_ignores() -> None:
    w, other = Table("w", ("f",)), Table("o", ("f",))
    assert gradients(total(w), [w, other])[other] is None


def test_a_keyed_loss_and_an_unknown_kernel_are_refused() -> None:
    with pytest.raises(ValueError, match="one total"):
        gradients(Table("w", ("f",)), [])
    with pytest.raises(ValueError, match="whitelisted"):
        apply(Table("w", ("f",)), "log")
    with pytest.raises(ValueError, match="group by"):
        total(Table("w", ("f",)), ("e",))


def test_a_node_used_twice_is_one_expression() -> None:
    w = Table("w", ("f",))
    z = apply(w, "exp")
    ctes, _ = lower({"out": total(Join(z, z, BINARY["mul"]))})
    assert sum("EXP(" in body for _, body in ctes) == 1


GOLDEN_DUCKDB = """\
WITH r0 AS (SELECT e, f, v AS v FROM x WHERE b = $batch),
r1 AS (SELECT f, v AS v FROM w),
r2 AS (SELECT a.e, a.f, (a.v * b.v) AS v FROM r0 a JOIN r1 b ON a.f = b.f),
r3 AS (SELECT e, SUM(v) AS v FROM r2 GROUP BY e),
r4 AS (SELECT e, (GREATEST(v, 0) + LN(1 + EXP(-ABS(v)))) AS v FROM r3),
r5 AS (SELECT e, wt AS v FROM y WHERE b = $batch),
r6 AS (SELECT a.e, (a.v * b.v) AS v FROM r4 a JOIN r5 b ON a.e = b.e),
r7 AS (SELECT e, t * wt AS v FROM y WHERE b = $batch),
r8 AS (SELECT a.e, (a.v * b.v) AS v FROM r3 a JOIN r7 b ON a.e = b.e),
r9 AS (SELECT a.e, (a.v - b.v) AS v FROM r6 a JOIN r8 b ON a.e = b.e),
r10 AS (SELECT e, 1.00000000000000000e+00 AS v FROM r9),
r11 AS (SELECT e, (v * -1.00000000000000000e+00) AS v FROM r10),
r12 AS (SELECT a.e, (a.v * b.v) AS v FROM r11 a JOIN r7 b ON a.e = b.e),
r13 AS (SELECT a.e, (a.v * b.v) AS v FROM r10 a JOIN r5 b ON a.e = b.e),
r14 AS (SELECT a.e, (a.v / (1 + EXP(-b.v))) AS v FROM r13 a JOIN r3 b ON a.e = b.e),
r15 AS (SELECT e, SUM(v) AS v FROM (SELECT e, v FROM r12 UNION ALL SELECT e, v FROM r14) u GROUP\
 BY e),
r16 AS (SELECT a.e, a.f, b.v AS v FROM r2 a JOIN r15 b ON a.e = b.e),
r17 AS (SELECT a.e, a.f, (a.v * b.v) AS v FROM r16 a JOIN r0 b ON a.e = b.e AND a.f = b.f),
r18 AS (SELECT f, SUM(v) AS v FROM r17 GROUP BY f)
SELECT * FROM r18"""

GOLDEN_SPARK = """\
WITH r0 AS (SELECT e, f, v AS v FROM x WHERE b = :batch), r1 AS (SELECT f, v AS v FROM w), r2 AS\
 (SELECT a.e, a.f, (a.v * b.v) AS v FROM r0 AS a JOIN r1 AS b ON a.f = b.f), r3 AS (SELECT e, SU\
M(v) AS v FROM r2 GROUP BY e), r4 AS (SELECT e, (GREATEST(v, 0) + LN(1 + EXP(-ABS(v)))) AS v FRO\
M r3), r5 AS (SELECT e, wt AS v FROM y WHERE b = :batch), r6 AS (SELECT a.e, (a.v * b.v) AS v FR\
OM r4 AS a JOIN r5 AS b ON a.e = b.e), r7 AS (SELECT e, t * wt AS v FROM y WHERE b = :batch), r8\
 AS (SELECT a.e, (a.v * b.v) AS v FROM r3 AS a JOIN r7 AS b ON a.e = b.e), r9 AS (SELECT a.e, (a\
.v - b.v) AS v FROM r6 AS a JOIN r8 AS b ON a.e = b.e), r10 AS (SELECT e, 1.00000000000000000e+0\
0 AS v FROM r9), r11 AS (SELECT e, (v * -1.00000000000000000e+00) AS v FROM r10), r12 AS (SELECT\
 a.e, (a.v * b.v) AS v FROM r11 AS a JOIN r7 AS b ON a.e = b.e), r13 AS (SELECT a.e, (a.v * b.v)\
 AS v FROM r10 AS a JOIN r5 AS b ON a.e = b.e), r14 AS (SELECT a.e, (a.v / (1 + EXP(-b.v))) AS v\
 FROM r13 AS a JOIN r3 AS b ON a.e = b.e), r15 AS (SELECT e, SUM(v) AS v FROM (SELECT e, v FROM \
r12 UNION ALL SELECT e, v FROM r14) AS u GROUP BY e), r16 AS (SELECT a.e, a.f, b.v AS v FROM r2 \
AS a JOIN r15 AS b ON a.e = b.e), r17 AS (SELECT a.e, a.f, (a.v * b.v) AS v FROM r16 AS a JOIN r\
0 AS b ON a.e = b.e AND a.f = b.f), r18 AS (SELECT f, SUM(v) AS v FROM r17 GROUP BY f) SELECT * \
FROM r18"""


def test_generated_sql_is_stable_in_both_dialects() -> None:
    # The policy's model, one batch: its derived backward pass, pinned as text.
    loss, w = models.logistic_regression(models.Tables("x", "y", "w", where="b = $batch"))
    grad = gradients(loss, [w])[w]
    assert grad is not None
    assert select(grad) == GOLDEN_DUCKDB
    assert transpile(GOLDEN_DUCKDB, "spark") == GOLDEN_SPARK


def test_transpiling_log_keeps_duckdbs_base_10() -> None:
    # DuckDB's LOG(x) is base 10 and Spark's natural; the transpiler alone keeps the name.
    spark = transpile("SELECT LOG(x) AS v FROM t", "spark")
    assert spark == "SELECT LN(x) / LN(10) AS v FROM t"
    assert transpile("SELECT LOG(2, x) AS v FROM t", "spark") == "SELECT LOG(2, x) AS v FROM t"
    for build in (models.softmax_regression, models.logistic_regression):
        loss, w = build(models.Tables("x", "y", "w"))
        grad = gradients(loss, [w])[w]
        assert grad is not None
        assert "LOG(" not in select(grad) and "LN(" in select(grad)


def test_the_relational_core_imports_no_engine() -> None:
    # duckdb, pyspark and sqlglot are imported when an engine is opened or SQL transpiled.
    code = ("import sys\n"
            "import streamcascade.models.relational.pipeline, streamcascade.models.relational.scale"
            "\nloaded = [m for m in ('duckdb', 'pyspark', 'sqlglot') if m in sys.modules]\n"
            "sys.exit(f'imported {loaded}' if loaded else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
