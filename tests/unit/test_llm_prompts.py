"""Prompt templates, answer constraints and the reading of answers, for every built-in task."""

from __future__ import annotations

import json

import pytest

from streamcascade.errors import ConfigurationError
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.llm.factory import make_llm
from streamcascade.models.llm.openai import OpenAIChatLLM, chat_completions_url
from streamcascade.models.llm.prompts import (
    CONSTRAIN_MODES,
    PromptTemplate,
    builtin_templates,
    read_answer,
)
from streamcascade.models.tasks import TASKS, generic_task
from streamcascade.models.types import LabelSet


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("mode", CONSTRAIN_MODES)
def test_every_builtin_task_has_a_system_and_a_user_message(name: str, mode: str) -> None:
    template = builtin_templates(mode)[name]
    system, user = template.messages("some text")
    assert (system["role"], user["role"]) == ("system", "user")
    assert TASKS[name].question in system["content"]
    assert all(word in system["content"] for word in TASKS[name].answer_words)
    assert user["content"].endswith("some text")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_json_schema_admits_exactly_the_answer_words(name: str) -> None:
    task = TASKS[name]
    fields = PromptTemplate(task, constrain="json_schema").constraint()
    schema = fields["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == list(task.answer_words)
    assert schema["required"] == ["label"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_grammar_admits_exactly_the_answer_words(name: str) -> None:
    grammar = PromptTemplate(TASKS[name], constrain="grammar").constraint()["grammar"]
    assert grammar.startswith("root ::= ")
    alternatives = [json.loads(a) for a in grammar.removeprefix("root ::= ").split(" | ")]
    assert alternatives == list(TASKS[name].answer_words)


def test_no_constraint_sends_no_constraint_fields() -> None:
    assert PromptTemplate(TASKS["imdb"], constrain="none").constraint() == {}


def test_long_texts_are_cut_and_say_so() -> None:
    (_, user) = PromptTemplate(TASKS["imdb"], max_text_chars=10).messages("x" * 50)
    assert user["content"].endswith("x" * 10 + " [...]")


def test_bad_template_options_are_refused() -> None:
    with pytest.raises(ValueError, match="constrain"):
        PromptTemplate(TASKS["imdb"], constrain="logit_bias")
    with pytest.raises(ValueError, match="max_text_chars"):
        PromptTemplate(TASKS["imdb"], max_text_chars=0)


@pytest.mark.parametrize(
    ("task", "raw", "expected"),
    [
        ("imdb", '{"label": "positive"}', 1),
        ("imdb", '{"label": "Negative"}', 0),
        ("imdb", '{"label": "meh"}', None),
        ("imdb", '{"label": 1}', None),
        ("imdb", '{"label": "posi', None),  # truncated JSON names no label
        ("imdb", "positive", 1),
        ("imdb", "  Negative.\n", 0),
        ("imdb", "The sentiment of this review is positive.", 1),
        ("imdb", "positive or negative", None),
        ("imdb", "I cannot tell", None),
        ("imdb", "", None),
        ("hatespeech", "No", 0),
        ("hatespeech", "yes, it does", 1),
        ("hatespeech", "nothing hateful", None),  # "no" only as a whole word
        ("hatespeech", '{"label": "hate"}', 1),  # a label name is read in the constrained form
        ("hatespeech", '{"label": "noHate"}', 0),
        ("isear", "fear", 5),
        ("isear", "Joy!", 0),
        ("isear", "joy and fear", None),
        ("isear", "disgusting", None),
    ],
)
def test_answers_are_read_never_guessed(task: str, raw: str, expected: int | None) -> None:
    assert read_answer(TASKS[task], raw) == expected


def test_a_users_own_task_reads_its_label_names() -> None:
    task = generic_task("mine", LabelSet(("happy", "unhappy", "neutral")))
    assert read_answer(task, "unhappy") == 1
    assert read_answer(task, "Happy.") == 0
    assert read_answer(task, "happy, not unhappy") is None
    assert PromptTemplate(task).constraint()["response_format"]["json_schema"]["schema"][
        "properties"
    ]["label"]["enum"] == ["happy", "unhappy", "neutral"]


def test_the_client_is_an_llm_backend_and_the_factory_makes_it() -> None:
    llm = make_llm(TASKS["isear"], url="http://127.0.0.1:1/v1", model="m", api_key="sk-x")
    assert isinstance(llm, OpenAIChatLLM) and isinstance(llm, LLMBackend)
    assert llm.labels == TASKS["isear"].labels and llm.name == "openai:m"
    assert "sk-x" not in repr(llm) and "sk-x" not in str(llm.api_key)


def test_the_request_body_carries_prompt_constraint_and_limits() -> None:
    llm = OpenAIChatLLM("http://h:1", "m", TASKS["imdb"], constrain="grammar", seed=7)
    body = llm.request_body("a film")
    assert body["model"] == "m" and body["temperature"] == 0.0 and body["seed"] == 7
    assert body["max_tokens"] == 8 and body["grammar"] == 'root ::= "negative" | "positive"'
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://h:8080", "http://h:8080/v1/chat/completions"),
        ("http://h:8080/v1", "http://h:8080/v1/chat/completions"),
        ("https://api.example.com/v1/", "https://api.example.com/v1/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
    ],
)
def test_base_urls_lead_to_the_chat_completions_endpoint(url: str, endpoint: str) -> None:
    assert chat_completions_url(url) == endpoint


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"timeout": 0},
        {"retries": -1},
        {"cache_size": -1},
        {"backoff_base": -1.0},
        {"completion_price_per_1k": -0.1},
        {"constrain": "regex"},
        {"max_text_chars": 0},
        {"breaker_failures": 0},
        {"breaker_reset": -1.0},
    ],
)
def test_bad_client_options_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        OpenAIChatLLM("http://h:1", "m", TASKS["imdb"], **options)  # type: ignore[arg-type]


def test_a_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="http"):
        OpenAIChatLLM("localhost:8080", "m", TASKS["imdb"])


@pytest.mark.parametrize(
    "module",
    [
        "streamcascade.models.llm.prompts",
        "streamcascade.models.llm.resilience",
        "streamcascade.models.llm.openai",
    ],
)
def test_the_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
