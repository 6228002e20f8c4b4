"""Reading an LLM's raw answer, exactly as shared/datasets/README.md documents it."""

from __future__ import annotations

import pytest

from streamcascade.models.tasks import TASKS, generic_task
from streamcascade.models.types import LabelSet


@pytest.mark.parametrize(("raw", "expected"), [
    ("no", 0), ("No.", 0), ("yes", 1), ("Yes, it is.", 1),
    ("yes and no", 0),  # "no" is searched first, as the paper's code does
    ("I know it", 0),  # ... by substring, so "know" reads as "no" there too
    ("1", 1), ("0", 0), ("-1", None), ("2", None), ("maybe", None), ("", None),
    ("--1", None), ("\u00b2", None), ("1\u00b2", None),  # not integers, though str.isdigit
])
def test_hatespeech(raw: str, expected: int | None) -> None:
    assert TASKS["hatespeech"].parse_answer(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("positive", 1), ("Negative", 0), ("POSITIVE.", 1),
    ("not positive but negative", 1),  # "positive" is searched first
    ("1", 1), ("0", 0), ("-1", None), ("neutral", None),
])
def test_imdb(raw: str, expected: int | None) -> None:
    assert TASKS["imdb"].parse_answer(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("joy", "joy"), ("Sadness", "sadness"), ("fear and disgust", "fear"),
    ("disgust, then joy", "joy"),  # the first name in the order joy, sadness, anger, ... wins
    ("shame or guilt", "guilt"), ("anger", "anger"),
])
def test_isear_names(raw: str, expected: str) -> None:
    task = TASKS["isear"]
    assert task.parse_answer(raw) == task.labels.index(expected)


def test_isear_class_ids_follow_the_papers_order() -> None:
    task = TASKS["isear"]
    ids = ["joy", "sadness", "anger", "guilt", "shame", "fear", "disgust"]
    assert [task.parse_answer(str(i)) for i in range(7)] == [task.labels.index(n) for n in ids]
    assert task.parse_answer("7") is None and task.parse_answer("-1") is None
    assert task.parse_answer("surprise") is None


def test_metrics_of_the_built_in_tasks() -> None:
    assert TASKS["imdb"].metric == "accuracy" and TASKS["isear"].metric == "accuracy"
    assert TASKS["hatespeech"].metric == "f1" and TASKS["hatespeech"].positive_label == "hate"


def test_generic_task_prefers_the_longer_name() -> None:
    task = generic_task("mood", LabelSet(("happy", "unhappy", "neutral")))
    assert task.parse_answer("Unhappy.") == 1
    assert task.parse_answer("happy") == 0
    assert task.parse_answer("none of these") is None
