"""The recorded LLM backend on the real rows of the shared streams, parsed as documented.

The shared streams live beside the checkout (``../shared/datasets``); they are data for the
benchmarks and this tier, never for the unit tier.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.tasks import TASKS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
GPT = "gpt-3.5-turbo-1106"


def shared(name: str) -> Path:
    path = SHARED / f"{name}.jsonl.gz"
    if not path.is_file():  # the shared streams live beside the checkout, not in it
        pytest.fail(f"shared stream missing: {path}")
    return path


@functools.cache
def correct_and_unparsed(name: str, llm_name: str) -> tuple[int, int, int]:
    task = TASKS[name]
    path = shared(name)
    llm = RecordedLLM(path, llm_name, task)
    rows = read_stream(path)
    answers = [llm.answer_now(r.id) for r in rows]
    correct = sum(a.label == task.labels.index(str(r.label)) for a, r in zip(answers, rows,
                                                                              strict=True))
    return correct, sum(a.label is None for a in answers), len(rows)


@pytest.mark.parametrize(("name", "correct", "total"), [
    ("hatespeech", 8920, 10703), ("isear", 5393, 7666), ("imdb", 23538, 25000)])
def test_gpt_accuracy_matches_the_datasets_readme(name: str, correct: int, total: int) -> None:
    got, _, n = correct_and_unparsed(name, GPT)
    assert (got, n) == (correct, total)


def test_hatespeech_gpt_accuracy_is_the_papers() -> None:
    got, _, n = correct_and_unparsed("hatespeech", GPT)
    assert round(got / n, 4) == 0.8334


def test_llama_unparsed_answers_are_no_answers() -> None:
    got, unparsed, n = correct_and_unparsed("isear", "llama-2-70b-chat")
    assert unparsed == 241
    assert round(got / n, 4) == 0.6824


