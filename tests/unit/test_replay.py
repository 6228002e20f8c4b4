"""The replay: a stream answered event by event, learned from honestly, scored, and swept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cascade_streams import sentiment_stream, write_stream
from click.testing import CliRunner, Result

from streamcascade.cli import cli
from streamcascade.errors import ConfigurationError
from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.replay import dominance, replay, truth_arrives
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.tasks import TASKS

TASK = TASKS["imdb"]


class SpyStage(HashedTextStage):
    """A real River stage that records the order of its calls."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        super().__init__(TASK.labels)
        self.log = log

    def predict_proba(self, texts, upstream=None):  # type: ignore[no-untyped-def]
        self.log.extend(("predict", t) for t in texts)
        return super().predict_proba(texts, upstream)

    def learn(self, texts, targets, upstream=None):  # type: ignore[no-untyped-def]
        self.log.extend(("learn", t) for t in texts)
        super().learn(texts, targets, upstream)


@pytest.mark.parametrize("feedback", ["llm", "ground_truth", "both"])
def test_no_event_is_learned_before_it_is_answered(tmp_path: Path, feedback: str) -> None:
    rows = sentiment_stream(300, seed=2)
    path = write_stream(tmp_path / "imdb.jsonl", rows)
    log: list[tuple[str, str]] = []
    from streamcascade.models.cascade import Cascade

    cascade = Cascade(TASK, [SpyStage(log)], RecordedLLM(path, "oracle", TASK), CascadeConfig())
    answer = cascade.answer

    async def answer_logged(events, on_early=None):  # type: ignore[no-untyped-def]
        log.extend(("answer", e.text) for e in events)
        return await answer(events, on_early)

    cascade.answer = answer_logged  # type: ignore[method-assign]
    replay(read_stream(path), TASK, cascade, feedback=feedback, batch_size=4, progress=False)
    # The cascade's answers, not the stage's predictions: learning predicts too, for events it
    # has no record of, so a stage prediction before a learning step proves nothing.
    answered: dict[str, int] = {}
    for i, (kind, text) in enumerate(log):
        if kind == "answer":
            answered.setdefault(text, i)
        elif kind == "learn":
            assert text in answered and answered[text] < i
    learned = sum(kind == "learn" for kind, _ in log)
    if feedback == "llm":
        assert learned < len(rows)  # only events the LLM answered (or audited) teach
    else:
        assert learned >= len(rows)  # every event's label arrives after it is answered


def test_a_sampled_labelling_team_teaches_only_its_sample(tmp_path: Path) -> None:
    rows = sentiment_stream(400, seed=3)
    path = write_stream(tmp_path / "imdb.jsonl", rows)
    stream = read_stream(path)

    def learned_texts(feedback: str, truth_share: float) -> list[str]:
        log: list[tuple[str, str]] = []
        from streamcascade.models.cascade import Cascade

        cascade = Cascade(TASK, [SpyStage(log)], RecordedLLM(path, "oracle", TASK),
                          CascadeConfig())
        replay(stream, TASK, cascade, feedback=feedback, truth_share=truth_share,
               progress=False)
        return [text for kind, text in log if kind == "learn"]

    sample = learned_texts("ground_truth", 0.3)
    assert 0.2 * len(rows) < len(sample) < 0.4 * len(rows)
    assert sample == learned_texts("ground_truth", 0.3)  # the same events every run
    expected = [r.text for r in stream if truth_arrives(r.id, 0.3)]
    assert sample == expected
    # No ground truth at all: exactly the LLM-only replay.
    assert learned_texts("both", 0.0) == learned_texts("llm", 1.0)
    with pytest.raises(ConfigurationError, match="ground truth must be within"):
        learned_texts("both", 1.5)


def test_scores_against_ground_truth(tmp_path: Path) -> None:
    rows = sentiment_stream(800, hard_share=0.2, seed=4)
    path = write_stream(tmp_path / "imdb.jsonl", rows)
    llm = RecordedLLM(path, "oracle", TASK)
    result = replay(read_stream(path), TASK, build_cascade(TASK, llm, CascadeConfig()),
                    progress=False)
    assert result["n"] == 800 and result["metric"] == "accuracy"
    assert 0 < result["llm_fraction"] < 1
    shares = sum(s["share"] for s in result["stages"].values())
    assert shares == pytest.approx(1.0)
    assert result["relative_cost"] == pytest.approx(
        result["llm_call_fraction"] + result["stages"]["hashed"]["cost_per_event"] / 1182, abs=1e-6)
    assert result["stages"]["hashed"]["predict_events_per_s"] > 0


def test_dominance_compares_within_the_baselines_range() -> None:
    base = [{"llm_call_fraction": 0.2, "quality": 0.8}, {"llm_call_fraction": 0.6, "quality": 0.9}]
    good = [{"llm_call_fraction": 0.4, "quality": 0.86}, {"llm_call_fraction": 0.9, "quality": 1}]
    bad = [{"llm_call_fraction": 0.4, "quality": 0.84}]
    assert dominance(good, base)["learned_at_least_baseline"]
    assert dominance(good, base)["compared"] == 1
    assert not dominance(bad, base)["learned_at_least_baseline"]


def test_dominance_compares_frontiers_and_keeps_each_points_own_gap() -> None:
    base = [{"llm_call_fraction": 0.2, "quality": 0.8}, {"llm_call_fraction": 0.6, "quality": 0.9},
            {"llm_call_fraction": 0.9, "quality": 0.88}]
    # The learned point at 0.8 spends more than the one at 0.5 for less: the 0.5 point's quality
    # is within the 0.8 budget, and the baseline's envelope there is 0.9.
    learned = [{"llm_call_fraction": 0.5, "quality": 0.92},
               {"llm_call_fraction": 0.8, "quality": 0.89}]
    result = dominance(learned, base)
    assert result["learned_at_least_baseline"]
    late = result["points"][1]
    assert late["learned_frontier"] == 0.92 and late["baseline"] == pytest.approx(0.9)
    assert late["gap_at_point"] == pytest.approx(-0.01)
    assert result["min_gap_at_point"] == pytest.approx(-0.01)
    # Below the baseline at its own cheapest share, the frontier cannot help.
    worse = [{"llm_call_fraction": 0.3, "quality": 0.7}, *learned]
    assert not dominance(worse, base)["learned_at_least_baseline"]


def test_cli_replay_with_sweep_and_plot(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(400, hard_share=0.2, seed=6))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(cli, [
        "replay", "--dataset", str(path), "--llm", "oracle", "--sweep", "--json", str(out),
        "--plot", str(png), "--limit", "300", "--shuffle", "--seed", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("dataset", "n", "metric", "quality", "llm_quality", "accuracy", "macro_f1",
                "llm_fraction", "relative_cost", "stages", "config", "seed", "baseline"):
        assert key in data
    assert data["n"] == 300 and data["seed"] == 3 and data["llm_quality"] == 1.0
    assert data["config"]["stages"] == ["hashed"]
    assert len(data["sweep"]["learned"]) == 8 and len(data["sweep"]["baseline"]) == 9
    assert "learned_at_least_baseline" in data["sweep"]["comparison"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_generic_task_and_errors(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"{w} thing", "label": w, "llm": {"m": w}}
            for i, w in enumerate(["red", "blue", "green"] * 40)]
    path = write_stream(tmp_path / "colours.jsonl", rows)
    out = tmp_path / "c.json"
    ok = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm", "m", "--json",
                                  str(out), "--target-llm-share", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["task"] == "colours"
    bad = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm", "m", "--json",
                                   str(out), "--mu", "0.1", "--target-llm-share", "0.5"])
    assert bad.exit_code != 0 and "one operating point" in bad.output
    missing = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm", "nope",
                                       "--json", str(out)])
    assert missing.exit_code != 0 and "no recorded answers" in missing.output
    base = ["replay", "--dataset", str(path), "--llm", "m", "--json", str(out)]
    for flags, says in ((["--plot", str(tmp_path / "p.png")], "give --sweep too"),
                        (["--limit", "0"], "at least 1")):
        refused = CliRunner().invoke(cli, [*base, *flags])
        assert refused.exit_code != 0 and says in refused.output
    one = write_stream(tmp_path / "one.jsonl", rows[:1])  # a file with one label
    single = CliRunner().invoke(cli, ["replay", "--dataset", str(one), "--llm", "m", "--json",
                                      str(out)])
    assert single.exit_code != 0 and "at least two labels" in single.output


def _replay_small_stream(tmp_path: Path, *flags: str) -> tuple[Result, Path]:
    """``streamcascade replay`` of a small sentiment stream with ``flags``; the CLI's result and
    the JSON's path."""
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(200, seed=8))
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm", "oracle",
                                      "--json", str(out), *flags])
    return result, out


def test_cli_prices_stages(tmp_path: Path) -> None:
    result, out = _replay_small_stream(tmp_path, "--stage-cost", "oracle=10",
                                       "--stage-cost", "hashed=1")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["stages"]["hashed"]["cost_per_event"] == 1.0
    # every event runs the hashed stage (1) and a share of them the LLM (10), over 10 per event
    assert data["relative_cost"] == pytest.approx(data["llm_call_fraction"] + 0.1)
    bad, _ = _replay_small_stream(tmp_path, "--stage-cost", "hashed")
    assert bad.exit_code != 0 and "NAME=PRICE" in bad.output


def test_cli_passes_stage_options(tmp_path: Path) -> None:
    result, out = _replay_small_stream(tmp_path, "--stage-option", "hashed.n_features=64",
                                       "--stage-option", "hashed.bigrams=false")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["stage_options"] == {"hashed": {"n_features": 64, "bigrams": False}}
    # 64 features x 2 classes + 2 biases, over BERT-base's 110M parameters
    assert data["stages"]["hashed"]["cost_per_event"] == pytest.approx(130 / 110e6)
    bad, _ = _replay_small_stream(tmp_path, "--stage-option", "hashed.nope=1")
    assert bad.exit_code != 0 and "nope" in bad.output


def test_cli_records_the_share_of_events_with_ground_truth(tmp_path: Path) -> None:
    result, out = _replay_small_stream(tmp_path, "--feedback", "both", "--truth-share", "0.5")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["truth_share"] == 0.5
    bad, _ = _replay_small_stream(tmp_path, "--feedback", "both", "--truth-share", "2")
    assert bad.exit_code != 0 and "--truth-share" in bad.output


def test_a_live_backends_connections_close_with_the_replays_loop(tmp_path: Path) -> None:
    """Each replay (and each sweep point) runs in its own event loop; a live backend's HTTP
    connections belong to it and are closed when it ends, not left to the garbage collector."""
    import asyncio

    from streamcascade.models.cascade import Cascade

    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(40, seed=9))

    closed_in: list[asyncio.AbstractEventLoop] = []

    class Live(RecordedLLM):
        async def aclose(self) -> None:
            closed_in.append(asyncio.get_running_loop())

    llm = Live(path, "oracle", TASK)
    for _ in range(2):
        replay(read_stream(path), TASK, Cascade(TASK, [HashedTextStage(TASK.labels)], llm,
                                                CascadeConfig()), progress=False)
    assert len(closed_in) == 2 and closed_in[0] is not closed_in[1]
