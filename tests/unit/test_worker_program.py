"""``streamcascade worker --program``: what it serves, and what it refuses before it touches
the cluster."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from worker_program_examples import compiled

from streamcascade.cli import cli
from streamcascade.commands.worker_program import ProgramFlags, build_program_from_flags
from streamcascade.errors import ConfigurationError
from streamcascade.models.programs import CompiledProgram
from streamcascade.models.tasks import TASKS, generic_task
from streamcascade.models.types import Decision, Event, LabelSet
from streamcascade.operators.codec import RecordCodec
from streamcascade.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"
EXAMPLES = "worker_program_examples"
XY = generic_task("xy", LabelSet(("x", "y")))


@pytest.fixture(autouse=True)
def no_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here comes before a topic would be made (the cluster does not exist)."""
    import streamcascade.operators.topics as topics

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("topics were made before the program was checked")

    monkeypatch.setattr(topics, "prepare_topics", refuse)


def run_worker(*args: str) -> Result:
    return CliRunner().invoke(cli, ["worker", "--bootstrap", "127.0.0.1:1", *args])


def refused(*args: str) -> str:
    result = run_worker(*args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    return result.output


def test_an_unknown_program_is_refused_with_the_known_ones() -> None:
    out = refused("--program", "nope", "--task", "hatespeech")
    assert "unknown program 'nope'" in out and "route" in out and "MODULE:ATTRIBUTE" in out
    assert "cannot import 'no_such_module'" in refused("--program", "no_such_module:x")
    assert "has no attribute 'missing'" in refused("--program", f"{EXAMPLES}:missing")
    assert "is a int" in refused("--program", f"{EXAMPLES}:not_a_program")


def test_a_module_without_backends_is_refused() -> None:
    assert "module 'ask' has no backend" in refused("--program", f"{EXAMPLES}:no_backend")


def test_a_budget_below_the_cheapest_backend_is_refused() -> None:
    out = refused("--program", "route", "--task", "hatespeech", "--llm-records", str(DATA),
                  "--budget", "0")
    assert "below the cheapest way to answer an event" in out
    assert "must be >= 0" in refused("--program", "route", "--task", "hatespeech",
                                     "--budget", "-1")


def test_flags_of_the_other_kind_are_refused() -> None:
    out = refused("--program", "route", "--task", "hatespeech", "--mu", "0.1")
    assert "--mu set a cascade, not a program" in out
    out = refused("--task", "hatespeech", "--budget", "300")
    assert "--budget shape a program: add --program" in out
    assert "--pass-through" in refused("--program", "route", "--pass-through")
    out = refused("--program", f"{EXAMPLES}:compiled", "--budget", "10")
    assert "compiled program with its own config; drop --budget" in out
    out = refused("--program", f"{EXAMPLES}:twice", "--task", "hatespeech")
    assert "answers the synthetic task, not hatespeech" in out
    out = refused("--program", "route", "--task", "hatespeech", "--stages", "onnx")
    assert "hashed or hashed,onnx" in out
    out = refused("--program", "route", "--task", "hatespeech", "--llm", "gpt-3.5-turbo-1106")
    assert "--llm-records" in out
    out = refused("--program", "route", "--task", "hatespeech", "--llm", "nobody",
                  "--llm-records", str(DATA))
    assert "no recorded answers of ['nobody']" in out
    out = refused("--program", "hate_gate", "--task", "isear")
    assert "written for ['hatespeech']" in out


def test_a_built_in_program_gets_the_recorded_llms_and_the_budget() -> None:
    flags = ProgramFlags(budget=300.0, budget_mode="cap", warmup=5, seed=3,
                         backend_costs=("hashed=0.5",), llm_records=str(DATA))
    model = build_program_from_flags("route", TASKS["hatespeech"], flags, Settings())
    assert isinstance(model, CompiledProgram)
    backends = [b.name for b in model.program.modules[0].backends]
    assert backends == ["hashed", "llama-2-70b-chat", "gpt-3.5-turbo-1106"]
    config = model.config
    assert (config.budget, config.budget_mode, config.warmup, config.seed) == (300, "cap", 5, 3)
    assert model.program.modules[0].backends[0].cost == 0.5
    only = build_program_from_flags(
        "route", TASKS["hatespeech"],
        ProgramFlags(llm="gpt-3.5-turbo-1106", llm_records=str(DATA)), Settings())
    assert [b.name for b in only.program.modules[0].backends] == ["hashed", "gpt-3.5-turbo-1106"]
    with pytest.raises(ConfigurationError, match="NAME=COST"):
        build_program_from_flags("route", TASKS["hatespeech"],
                                 ProgramFlags(backend_costs=("hashed",)), Settings())


def test_a_users_program_by_module_and_attribute() -> None:
    model = build_program_from_flags(f"{EXAMPLES}:twice", None, ProgramFlags(budget=200.0),
                                     Settings())
    assert model.program.name == "twice" and model.config.budget == 200.0
    served = build_program_from_flags(f"{EXAMPLES}:compiled", None, ProgramFlags(), Settings())
    assert served is compiled
    built = build_program_from_flags(f"{EXAMPLES}:build", XY, ProgramFlags(), Settings())
    assert built.program.name == "built" and built.task.name == "xy"
    with pytest.raises(ConfigurationError, match="give --task or --labels"):
        build_program_from_flags(f"{EXAMPLES}:build", None, ProgramFlags(), Settings())


def test_the_output_names_each_modules_backend_and_the_cost() -> None:
    model = build_program_from_flags(f"{EXAMPLES}:twice", None, ProgramFlags(), Settings())
    decision = asyncio.run(model.answer([Event("e1", "a:x:1")])).decisions[0]
    out = json.loads(RecordCodec().encode_output(decision, 1.0))
    chosen = out["backends"]["answer"]
    assert isinstance(chosen, list) and len(chosen) == 2  # called twice: both, in call order
    assert set(chosen) <= {"cheap", "dear"}
    prices = {"cheap": 1.0, "dear": 100.0}
    # Each backend is paid once per input: the second call on the same text may be free.
    assert out["cost"] >= prices[chosen[0]] and out["cost"] == pytest.approx(decision.cost)
    built = build_program_from_flags(f"{EXAMPLES}:build", XY, ProgramFlags(), Settings())
    one = asyncio.run(built.answer([Event("e2", "b:y:2")])).decisions[0]
    out = json.loads(RecordCodec().encode_output(one, 1.0))
    assert set(out["backends"]) == {"answer"} and out["backends"]["answer"] in prices
    assert out["cost"] >= prices[out["backends"]["answer"]]
    # A cascade's output has no such field: its stage says where the answer came from.
    assert "backends" not in json.loads(RecordCodec().encode_output(
        Decision("7", "x", 0, "hashed", 0, 0.9, 0.5, ["hashed"]), 1.0))
