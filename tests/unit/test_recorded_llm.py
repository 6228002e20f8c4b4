"""The recorded LLM backend on small generated streams (the shared streams: tests/integration/
test_recorded_streams.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cascade_streams import sentiment_stream, write_stream

from streamcascade.errors import ConfigurationError
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.llm.factory import make_llm
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import Event


def test_answers_in_order_with_the_llms_cost(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "s.jsonl", sentiment_stream(5))
    llm = RecordedLLM(path, "oracle", TASKS["imdb"])
    assert isinstance(llm, LLMBackend)
    answers = asyncio.run(llm.answer([Event("3", "x"), Event("1", "y")]))
    rows = read_stream(path)
    assert [a.label for a in answers] == [TASKS["imdb"].labels.index(str(rows[i].label))
                                          for i in (3, 1)]
    assert all(a.cost == 1182.0 and a.error is None for a in answers)
    assert RecordedLLM(path, "oracle", TASKS["imdb"], cost=7).cost == 7


def test_unparsable_and_missing_answers_are_no_answers(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "s.jsonl", sentiment_stream(3))
    llm = RecordedLLM(path, "broken", TASKS["imdb"])
    unparsable, missing = asyncio.run(llm.answer([Event("0", "x"), Event("99", "y")]))
    assert unparsable.label is None and "names none" in str(unparsable.error)
    assert unparsable.raw == "no idea"
    assert missing.label is None and "no recorded answer" in str(missing.error)


def test_a_null_recorded_answer_is_no_answer(tmp_path: Path) -> None:
    """JSON null is not the text "None" (which the hate-speech words would read as "no")."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 0, "text": "t", "label": "noHate", "llm": {"m": null}}\n'
                    '{"id": 1, "text": "u", "label": "noHate", "llm": {"m": "no"}}\n')
    llm = RecordedLLM(path, "m", TASKS["hatespeech"])
    null, answered = asyncio.run(llm.answer([Event("0", "t"), Event("1", "u")]))
    assert null.label is None and "no recorded answer" in str(null.error)
    assert answered.label == 0


def test_factory_and_errors(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "s.jsonl", sentiment_stream(3))
    llm = make_llm(TASKS["imdb"], recorded="oracle", records_path=path)
    assert isinstance(llm, RecordedLLM) and llm.name == "oracle"
    with pytest.raises(ConfigurationError, match="no recorded answers"):
        RecordedLLM(path, "gpt-9", TASKS["imdb"])
    with pytest.raises(ConfigurationError, match="not found"):
        RecordedLLM(tmp_path / "none.jsonl", "oracle", TASKS["imdb"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 0, "text": "a"}\n{"id": 1\n')
    with pytest.raises(ConfigurationError, match="line 2"):
        read_stream(bad)
