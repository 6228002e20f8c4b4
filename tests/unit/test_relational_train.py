"""Training from history on DuckDB: the step, the stage it yields, the input, the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cascade_streams import sentiment_stream, write_stream
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.errors import ConfigurationError
from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.relational import features, models, reference
from streamcascade.models.relational.driver import Problem, RelationalTrainer, TrainSpec
from streamcascade.models.relational.engines import DuckDBEngine, open_engine, spark_session
from streamcascade.models.relational.history import read_history
from streamcascade.models.relational.pipeline import TrainOptions, fit_stage
from streamcascade.models.relational.publish import training_metadata
from streamcascade.models.tasks import TASKS

TASK = TASKS["imdb"]
SMALL = {"n_features": 2**12}


def small_problem(n: int = 24, k: int = 3, decay: float = 0.01) -> Problem:
    rng = np.random.default_rng(3)
    keys = np.unique(np.repeat(np.arange(n), 3) * 10 + rng.integers(0, 10, 3 * n))
    e, f = keys // 10, keys % 10
    domain = np.unique(f)
    return Problem(models.softmax_regression, n, {"e": e, "f": f, "v": rng.random(e.size)},
                   {"e": np.arange(n), "c": rng.integers(0, k, n)},
                   {"f": np.repeat(domain, k), "c": np.tile(np.arange(k), domain.size),
                    "v": rng.normal(size=domain.size * k) * 0.1,
                    "decay": np.full(domain.size * k, decay)})


def test_a_step_is_adagrad_on_the_derived_gradient() -> None:
    problem = small_problem()
    engine = DuckDBEngine(threads=1)
    trainer = RelationalTrainer(engine, problem, TrainSpec(epochs=1, batch_size=problem.n_events,
                                                           learning_rate=0.3))
    trainer.train(track_loss=False)
    assert trainer.steps == 1
    got = trainer.weights()
    start = {**problem.weights, "g2": np.zeros(len(problem.weights["v"]))}
    y = {**problem.y, "wt": np.full(problem.n_events, 1.0 / problem.n_events)}
    _, grad = reference.softmax_regression(problem.x, y, start, problem.n_events)
    expected = reference.adagrad_step(start, grad["v"], 0.3)
    order = np.lexsort((start["c"], start["f"]))
    np.testing.assert_allclose(got["v"], expected["v"][order], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got["g2"], expected["g2"][order], rtol=1e-12, atol=1e-18)


def test_training_lowers_the_loss_and_repeats_exactly() -> None:
    runs = []
    for _ in range(2):
        trainer = RelationalTrainer(DuckDBEngine(threads=1), small_problem(),
                                    TrainSpec(epochs=3, batch_size=5, seed=4))
        before = trainer.loss()
        result = trainer.train()
        assert result.steps == 15 and result.loss < before
        assert result.epoch_losses[-1] == result.loss
        runs.append(result.weights["v"])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_the_trained_stage_answers_as_the_relational_model_does() -> None:
    rows = sentiment_stream(120, seed=2)
    texts = [str(r["text"]) for r in rows]
    labels = np.array([TASK.labels.index(str(r["label"])) for r in rows])
    options = TrainOptions(epochs=3, batch_size=16, stage_options=SMALL)
    fit = fit_stage(DuckDBEngine(threads=1), TASK, texts, labels, options)
    # The same texts' features, the trained weights, and the model's own softmax.
    x = features.feature_relation(fit.stage, texts)
    trained = fit.result.weights
    rel_logits = np.zeros((len(texts), 2))
    table = {(f, c): v for f, c, v in zip(trained["f"], trained["c"], trained["v"], strict=True)}
    for e, f, v in zip(x["e"], x["f"], x["v"], strict=True):
        for c in range(2):
            rel_logits[e, c] += v * table[(f, c)]
    expected = np.exp(rel_logits - rel_logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fit.stage.predict_proba(texts), expected, atol=2e-6)
    easy = np.array([not r["hard"] for r in rows])
    assert (expected.argmax(axis=1) == labels)[easy].mean() > 0.95


def history_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [dict(r) for r in sentiment_stream(10, seed=1)]
    rows += [{"id": 100, "label": "positive"},  # no text
             {"id": 101, "text": "   ", "label": "positive"},  # blank text
             {"id": 102, "text": "fine film", "label": "sideways"},  # unknown label
             {"id": 103, "text": "fine film"},  # no label
             {"id": 0, "text": "a repeated id", "label": "negative"},  # duplicate id
             {"text": "no id at all", "label": "negative"}]  # malformed
    return rows


def test_rows_that_cannot_teach_are_counted_not_guessed(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "h.jsonl", history_rows())
    with path.open("a") as handle:
        handle.write("{not json\n")
    history = read_history(path, TASK)
    assert len(history.events) == 10 and history.read == 17
    assert history.skip_counts() == {"malformed": 2, "no_text": 2, "no_label": 1,
                                      "unknown_label": 1, "duplicate_id": 1, "no_features": 0}
    llm = read_history(path, TASK, "llm:broken")
    assert not llm.events and llm.skipped["unknown_label"] == 10
    assert [e.label for e in read_history(path, TASK, "llm:oracle").events] == [
        e.label for e in history.events]
    with pytest.raises(ConfigurationError, match="ground_truth or llm"):
        read_history(path, TASK, "oracle")


def test_parquet_history_reads_like_json_lines(tmp_path: Path) -> None:
    source = write_stream(tmp_path / "h.jsonl", history_rows())
    target = tmp_path / "h.parquet"
    import duckdb

    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_json_auto('{source}')) TO '{target}' (FORMAT parquet)")
    parquet, lines = read_history(target, TASK), read_history(source, TASK)
    assert parquet.events == lines.events
    assert parquet.skip_counts() == lines.skip_counts()


def test_an_engine_that_is_not_installed_says_what_to_install(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'streamcascade\[spark\]'"):
        spark_session("local[3]")
    with pytest.raises(ConfigurationError, match="unknown engine"):
        open_engine("postgres")


def run_train(args: list[str]) -> Any:
    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


def test_train_writes_a_state_the_cascade_starts_from(tmp_path: Path) -> None:
    good = [dict(r) for r in sentiment_stream(300, seed=5)]
    stream = write_stream(tmp_path / "history.jsonl", good + history_rows()[10:])
    out, report = tmp_path / "state.bin", tmp_path / "report.json"
    result = run_train(["--input", str(stream), "--task", "imdb", "--out", str(out),
                        "--json", str(report), "--epochs", "2", "--batch-size", "32",
                        "--stage-option", "hashed.n_features=4096", "--folds", "3"])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["engine"] == "duckdb" and figures["rows"] == 300
    assert figures["skipped"]["no_text"] == 2 and figures["skipped"]["duplicate_id"] == 1
    assert figures["stage"]["steps"] == 2 * 10 and figures["policy"]["folds"] == 3
    assert figures["loss"] < np.log(2)
    data = out.read_bytes()
    training = training_metadata(data)
    assert training is not None and training["rows"] == 300 and training["engine"] == "duckdb"
    llm = RecordedLLM(write_stream(tmp_path / "clean.jsonl", good), "oracle", TASK)
    cascade = build_cascade(TASK, llm, CascadeConfig(), hashed=SMALL)
    cascade.load_state(data)
    assert not cascade.learner.warming_up
    assert cascade.controller.thresholds[0] > -1  # solved: the stage may answer at once
    policy = cascade.policies[0]
    assert policy.n_updates == 300 and np.abs(policy.mean_weights).sum() > 0


def test_a_run_stopped_half_way_leaves_the_old_state(tmp_path: Path, monkeypatch: Any) -> None:
    stream = write_stream(tmp_path / "history.jsonl", history_rows())
    out = tmp_path / "state.bin"
    out.write_bytes(b"the published version")

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("streamcascade.commands.train.train_from_history", interrupted)
    result = run_train(["--input", str(stream), "--task", "imdb", "--out", str(out)])
    assert result.exit_code == 1 and "Aborted" in result.output
    assert out.read_bytes() == b"the published version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl", "state.bin"]


def test_a_history_with_nothing_to_learn_is_a_clear_error(tmp_path: Path) -> None:
    for rows, message in ((history_rows()[10:14], "no row can teach"),
                          (history_rows()[14:], "1 usable events are too few")):
        stream = write_stream(tmp_path / "history.jsonl", rows)
        result = CliRunner().invoke(cli, ["train", "--input", str(stream), "--task", "imdb",
                                          "--out", str(tmp_path / "s.bin")])
        assert result.exit_code == 1 and message in result.output
        assert not (tmp_path / "s.bin").exists()


def test_replay_from_a_trained_state_sends_fewer_events_to_the_llm(tmp_path: Path) -> None:
    rows = [dict(r) for r in sentiment_stream(600, seed=7)]
    history = write_stream(tmp_path / "history.jsonl", rows[:300])
    stream = write_stream(tmp_path / "stream.jsonl", rows[300:])
    state = tmp_path / "state.bin"
    assert run_train(["--input", str(history), "--task", "imdb", "--out", str(state),
                      "--label-source", "llm:oracle", "--epochs", "3", "--batch-size", "32",
                      "--stage-option", "hashed.n_features=4096"]).exit_code == 0
    shares = {}
    for name, extra in (("cold", []), ("warm", ["--warm-start", str(state)])):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(cli, [
            "replay", "--dataset", str(stream), "--llm", "oracle", "--task", "imdb",
            "--stage-option", "hashed.n_features=4096", "--json", str(out), *extra])
        assert result.exit_code == 0, result.output
        shares[name] = json.loads(out.read_text())["llm_fraction"]
    assert shares["warm"] < 0.8 * shares["cold"]
    other = CliRunner().invoke(cli, [
        "replay", "--dataset", str(stream), "--llm", "oracle", "--task", "imdb",
        "--json", str(tmp_path / "x.json"), "--warm-start", str(state)])
    assert other.exit_code == 1 and "n_features" in other.output  # a state of another shape


def test_a_scaled_history_repeats_events_with_re_hashed_features(tmp_path: Path) -> None:
    from streamcascade.models.relational.scale import scaled_problem

    stream = write_stream(tmp_path / "h.jsonl", [dict(r) for r in sentiment_stream(40, seed=3)])
    base = scaled_problem(stream, TASK, 40, n_features=2**16)
    grown = scaled_problem(stream, TASK, 100, n_features=2**16)
    assert grown.n_events == 100 and int(grown.x["e"].max()) == 99
    assert (grown.x["f"] == features.BIAS).sum() == 100  # every event keeps its bias feature
    np.testing.assert_array_equal(grown.y["c"][40:80], base.y["c"])
    # Copies read other features than the originals: the domain grows with the copies.
    assert len(np.unique(grown.x["f"])) > 2 * len(np.unique(base.x["f"]))


def test_a_scale_run_can_time_its_first_steps_and_say_so(tmp_path: Path) -> None:
    from streamcascade.models.relational.scale import BATCH, measure

    stream = write_stream(tmp_path / "h.jsonl", [dict(r) for r in sentiment_stream(40, seed=3)])
    run = measure(stream, "imdb", "duckdb", 2 * BATCH + 10, max_steps=1)
    assert run["steps"] == 3 and run["extrapolated_from_steps"] == 1
    assert run["epoch_seconds"] >= 3 * run["step_seconds"] > 0
