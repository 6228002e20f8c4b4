"""The built-in programs and ``streamcascade program``, on small generated streams in the shared
format (recorded answers of both LLMs; the ONNX stage left out for speed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.errors import ConfigurationError
from streamcascade.models.datasets import read_stream
from streamcascade.models.programs import CompiledProgram, ProgramConfig
from streamcascade.models.programs.builtin import PROGRAMS, Sources, build_program
from streamcascade.models.programs.compare import ReplaySettings, compare
from streamcascade.models.tasks import TASKS

BASELINES = {"cheapest", "dearest", "gpt-3.5-turbo-1106", "router", "random", "cascade"}
KEYS = {"n", "metric", "quality", "cost_per_event", "cost_vs_dearest", "backend_calls",
        "oracle_quality", "baselines"}


def _stream(path: Path, labels: list[str], n: int, seed: int = 0) -> Path:
    """Rows whose text names its label half the time; GPT is right 85% of the time, Llama 75%
    (as a class id, the way the shared files record it)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(labels)
        word = label if rng.random() < 0.5 else rng.choice(["so", "then", "and", "well"])
        gpt = label if rng.random() < 0.85 else rng.choice(labels)
        llama = labels.index(label) if rng.random() < 0.75 else rng.randrange(len(labels))
        gpt_word = {"hate": "yes", "noHate": "no"}.get(gpt, gpt)
        rows.append({"id": i, "text": f"{word} sentence {i % 7} {word}", "label": label,
                     "llm": {"gpt-3.5-turbo-1106": gpt_word, "llama-2-70b-chat": str(llama)}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def hatespeech(tmp_path: Path) -> Path:
    return _stream(tmp_path / "hatespeech.jsonl", ["noHate", "hate"], 400)


@pytest.fixture
def isear(tmp_path: Path) -> Path:
    return _stream(tmp_path / "isear.jsonl", list(TASKS["isear"].labels.names), 400, seed=1)


def test_program_list_names_every_built_in_program_and_why_it_is_fair() -> None:
    result = CliRunner().invoke(cli, ["program", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert set(listed) == {"route", "hate_gate", "isear_valence"} == set(PROGRAMS)
    assert all(p["fair_test"] for p in listed.values())
    text = CliRunner().invoke(cli, ["program", "list"])
    assert "hate_gate (hatespeech)" in text.output and "fair test:" in text.output


@pytest.mark.parametrize("name", ["route", "hate_gate"])
def test_replay_writes_the_figures_and_every_baseline(tmp_path: Path, hatespeech: Path,
                                                      name: str) -> None:
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, [
        "program", "replay", "--program", name, "--dataset", str(hatespeech), "--feedback",
        "ground_truth", "--json", str(out), "--budget", "400", "--no-onnx", "--quiet",
        "--warmup", "50", "--shuffle", "--seed", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= KEYS
    assert report["n"] == 400 and report["metric"] == "f1[hate]"
    assert set(report["baselines"]) == BASELINES
    for point in report["baselines"].values():
        assert {"quality", "cost_per_event"} <= set(point)
    dearest = report["baselines"]["dearest"]["cost_per_event"]
    assert report["cost_vs_dearest"] == pytest.approx(report["cost_per_event"] / dearest)
    assert report["oracle_quality"] >= report["quality"]
    assert report["baselines"]["gpt-3.5-turbo-1106"]["cost_per_event"] == 1182.0
    assert report["baselines"]["cheapest"]["cost_per_event"] < 1.0
    assert sum(report["backend_calls"].values()) >= 400
    assert report["budget_windows"]["tolerance"] == 0.1


def test_a_two_module_program_reports_calls_per_module(isear: Path) -> None:
    task = TASKS["isear"]
    rows = read_stream(isear)
    report = compare(rows, task, "isear_valence", Sources(dataset=isear, onnx=False),
                     ProgramConfig(budget=500.0, warmup=50), ReplaySettings(progress=False))
    modules = {call.split("=")[0] for call in report["backend_calls"]}
    assert modules == {"valence", "emotion"}
    assert report["oracle_quality"] >= report["quality"]
    assert report["baselines"]["router"]["cost_per_event"] > 0


def test_programs_refuse_streams_they_were_not_written_for(isear: Path) -> None:
    with pytest.raises(ConfigurationError, match="written for"):
        build_program("hate_gate", TASKS["isear"], Sources(dataset=isear, onnx=False))
    with pytest.raises(ConfigurationError, match="unknown program"):
        build_program("nope", TASKS["isear"], Sources(dataset=isear, onnx=False))


def test_replay_refuses_a_budget_below_the_cheapest_way(tmp_path: Path, hatespeech: Path) -> None:
    result = CliRunner().invoke(cli, [
        "program", "replay", "--program", "route", "--dataset", str(hatespeech),
        "--json", str(tmp_path / "o.json"), "--budget", "0.001", "--no-onnx", "--quiet"])
    assert result.exit_code != 0
    assert "below the cheapest way to answer" in result.output


def test_the_gate_asks_the_cheaper_llm_and_the_hate_module_does_not_pay_it_twice(
        hatespeech: Path) -> None:
    task = TASKS["hatespeech"]
    program = build_program("hate_gate", task, Sources(dataset=hatespeech, onnx=False))
    model = CompiledProgram(program, ProgramConfig(chooser="dearest"))
    gate, hate = model.modules["gate"], model.modules["hate"]
    assert [b.name for b in gate.backends][-1] == "llama-2-70b-chat"
    assert [b.name for b in hate.backends][-1] == "gpt-3.5-turbo-1106"
    # The llama backend of both modules: one event that opens the gate pays llama once.
    program = build_program("hate_gate", task, Sources(dataset=hatespeech, onnx=False,
                                                       recorded=("llama-2-70b-chat",)))
    model = CompiledProgram(program, ProgramConfig(chooser="dearest"))
    import asyncio

    from streamcascade.models.types import Event

    rows = read_stream(hatespeech)
    opened = [r for r in rows if r.llm["llama-2-70b-chat"] == "1"][:3]
    answered = asyncio.run(model.answer([Event(r.id, r.text) for r in opened]))
    for decision in answered.decisions:
        assert decision.path == ["gate=llama-2-70b-chat", "hate=llama-2-70b-chat"]
        assert decision.cost == pytest.approx(636.0 + model.feature_cost)


def test_replay_with_a_plot_sweeps_budgets(tmp_path: Path, hatespeech: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    result = CliRunner().invoke(cli, [
        "program", "replay", "--program", "route", "--dataset", str(hatespeech),
        "--json", str(out), "--no-onnx", "--quiet", "--limit", "200", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert len(report["sweep"]) >= 4
    assert png.stat().st_size > 10_000
