"""Training on Apache Spark in local mode: the same generated SQL as DuckDB, the same numbers.

One Spark session serves every test of the run (the engine module keeps one per master URL).
Nothing is skipped: pyspark is installed by ``make test`` (the ``spark`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.models.relational import models
from streamcascade.models.relational.autodiff import gradients
from streamcascade.models.relational.driver import Problem, RelationalTrainer, TrainSpec
from streamcascade.models.relational.engines import DuckDBEngine, SparkEngine
from streamcascade.models.relational.publish import training_metadata
from streamcascade.models.relational.sql import select

MASTER = "local[1]"


@pytest.fixture(scope="module")
def spark() -> Any:
    engine = SparkEngine(MASTER)
    yield engine
    engine.close()


def test_ln_exp_and_a_transpiled_log_mean_the_same_on_both_engines(spark: Any) -> None:
    query = "SELECT LN(EXP(2.0)) AS natural, LOG(100.0) AS ten"
    for engine in (DuckDBEngine(threads=1), spark):
        got = engine.fetch(query)
        assert got["natural"][0] == pytest.approx(2.0, abs=1e-12)
        assert got["ten"][0] == pytest.approx(2.0, abs=1e-12)


def policy_tables(engine: Any) -> None:
    rng = np.random.default_rng(0)
    n, d = 20, 5
    engine.put("g_x", {"e": np.repeat(np.arange(n), d), "f": np.tile(np.arange(d), n),
                       "v": rng.normal(size=n * d), "b": np.repeat(np.arange(n) % 2, d)})
    engine.put("g_y", {"e": np.arange(n), "t": rng.random(n), "wt": np.full(n, 0.1),
                       "b": np.arange(n) % 2})
    engine.put("g_w", {"f": np.arange(d), "v": rng.normal(size=d)})


def test_the_derived_backward_pass_gives_the_same_gradient_on_spark(spark: Any) -> None:
    loss, w = models.logistic_regression(models.Tables("g_x", "g_y", "g_w", where="b = $batch"))
    grad = gradients(loss, [w])[w]
    assert grad is not None
    results = []
    for engine in (DuckDBEngine(threads=1), spark):
        policy_tables(engine)
        got = engine.fetch(select(grad) + " ORDER BY f", {"batch": 1})
        results.append(got["v"])
        assert got["f"].tolist() == list(range(5))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12, atol=1e-15)


def test_spark_and_duckdb_take_the_same_steps(spark: Any) -> None:
    rng = np.random.default_rng(1)
    n, k = 18, 3
    keys = np.unique(np.repeat(np.arange(n), 3) * 8 + rng.integers(0, 8, 3 * n))
    domain = np.unique(keys % 8)
    problem = Problem(models.softmax_regression, n,
                      {"e": keys // 8, "f": keys % 8, "v": rng.random(keys.size)},
                      {"e": np.arange(n), "c": rng.integers(0, k, n)},
                      {"f": np.repeat(domain, k), "c": np.tile(np.arange(k), domain.size),
                       "v": np.zeros(domain.size * k), "decay": np.full(domain.size * k, 1e-3)})
    spec = TrainSpec(epochs=1, batch_size=6, learning_rate=0.4)
    weights = []
    for engine in (DuckDBEngine(threads=1), spark):
        trainer = RelationalTrainer(engine, problem, spec, prefix="parity")
        result = trainer.train(track_loss=False)
        assert result.steps == 3
        weights.append(result.weights)
        trainer.close()
    for column in ("f", "c"):
        np.testing.assert_array_equal(weights[0][column], weights[1][column])
    for column in ("v", "g2"):
        np.testing.assert_allclose(weights[1][column], weights[0][column], rtol=1e-12,
                                   atol=1e-15)
    assert np.abs(weights[0]["v"]).max() > 0.1


def test_train_on_spark_writes_a_state(tmp_path: Path, spark: Any) -> None:
    rng = np.random.default_rng(2)
    words = {"positive": ["great", "superb", "lovely"], "negative": ["awful", "dull", "poor"]}
    rows = []
    for i in range(24):
        label = "positive" if i % 2 else "negative"
        rows.append({"id": i, "text": " ".join(rng.choice(words[label], 2)) + " film",
                     "label": label})
    rows.append({"id": 3, "text": "a repeated id", "label": "negative"})
    stream = tmp_path / "history.jsonl"
    stream.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, report = tmp_path / "state.bin", tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "train", "--input", str(stream), "--task", "imdb", "--engine", "spark", "--master",
        MASTER, "--epochs", "1", "--batch-size", "64", "--policy-epochs", "1",
        "--stage-option", "hashed.n_features=1024", "--out", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["engine"] == "spark" and figures["master"] == MASTER
    assert figures["rows"] == 24 and figures["skipped"]["duplicate_id"] == 1
    training = training_metadata(out.read_bytes())
    assert training is not None and training["engine"] == "spark"
