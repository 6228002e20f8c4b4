"""The headroom of a stage: what a deferral policy after it reaches when it knows, in hindsight,
where the stage disagrees with the LLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cascade_streams import sentiment_stream, write_stream
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.models.datasets import read_stream
from streamcascade.models.headroom import answer_order, headroom, prequential
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.tasks import TASKS

TASK = TASKS["imdb"]


def _stream(tmp_path: Path, contrarian: bool = False, n: int = 800) -> Path:
    rows = sentiment_stream(n, hard_share=0.3, seed=4)
    if contrarian:  # an LLM that says the opposite of the truth on every event
        for row in rows:
            row["llm"] = {"oracle": "negative" if row["label"] == "positive" else "positive"}
    return write_stream(tmp_path / "imdb.jsonl", rows)


def _run(path: Path) -> dict:
    rows = read_stream(path)
    answers = [TASK.labels.index(r.llm["oracle"]) for r in rows]
    truth = [TASK.labels.index(str(r.label)) for r in rows]
    return headroom(rows, TASK, HashedTextStage(TASK.labels, n_features=2**14), answers, truth,
                    progress=False)


def test_each_event_is_answered_before_its_answer_is_learned(tmp_path: Path) -> None:
    rows = read_stream(_stream(tmp_path, n=50))
    answers = [TASK.labels.index(r.llm["oracle"]) for r in rows]
    proba = prequential(rows, HashedTextStage(TASK.labels, n_features=2**14), answers,
                        progress=False)
    assert proba[0].tolist() == [0.5, 0.5]  # nothing learned before the first event
    # Unanswered events teach nothing: a stage that never gets an answer stays uniform.
    silent = prequential(rows, HashedTextStage(TASK.labels, n_features=2**14), [None] * len(rows),
                         progress=False)
    assert np.allclose(silent, 0.5)


def test_the_hindsight_policy_sends_the_events_the_stage_cannot_tell(tmp_path: Path) -> None:
    room = _run(_stream(tmp_path))
    # The hard third are coin flips: the stage disagrees with the (perfect) LLM on about half.
    assert 0.1 < room["disagreement_share"] < 0.3
    best = room["min_llm_share_within"]["hindsight_policy"]
    # Within a point of a perfect LLM means sending nearly every disagreement, and the hard
    # events' muddled words tell them apart, so not many more.
    assert room["disagreement_share"] - 0.02 <= best <= 0.4
    curve = room["curves"]["hindsight_policy"]
    assert curve[0]["llm_share"] == 0.0 and curve[-1]["llm_share"] == 1.0
    assert curve[-1]["quality"] == room["llm_quality"] == 1.0
    assert curve[0]["quality"] == room["stage_alone_quality"]


def test_the_stage_imitates_the_llm_not_the_truth(tmp_path: Path) -> None:
    room = _run(_stream(tmp_path, contrarian=True))
    assert room["agreement_with_llm"] > 0.75
    assert room["stage_alone_quality"] < 0.25 and room["llm_quality"] == 0.0


def test_the_hindsight_order_keeps_the_cells_that_agree_first() -> None:
    # Two cells by class said: the stage said class 0 and the LLM agreed; said 1 and it did not.
    proba = np.array([[0.9, 0.1]] * 4 + [[0.2, 0.8]] * 4)
    llm = np.array([0] * 4 + [0] * 4)
    order = answer_order("hindsight_policy", proba, np.full(8, 100.0), llm)
    assert set(order[:4].tolist()) == {0, 1, 2, 3}
    assert answer_order("confidence", proba, np.full(8, 100.0), llm)[:4].tolist() == [0, 1, 2, 3]


def test_cli_headroom_section_and_live_refusal(tmp_path: Path) -> None:
    path, out, png = _stream(tmp_path, n=300), tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm", "oracle",
                                      "--headroom", "--sweep", "--sweep-losses", "0.04",
                                      "--sweep-confidence", "0.5", "--json", str(out),
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    room = json.loads(out.read_text())["headroom"]
    assert room["stage"] == "hashed" and room["n"] == 300
    assert set(room["curves"]) == {"confidence", "hindsight_policy"}
    assert "headroom of hashed" in result.output
    live = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm-url",
                                    "http://127.0.0.1:9/v1", "--llm-model", "m", "--headroom",
                                    "--json", str(out)])
    assert live.exit_code != 0 and "recorded" in live.output
