"""What an LLM is asked about an event, how its answer is constrained, and how the answer is read.

A :class:`PromptTemplate` turns an event into a system and a user message. The label vocabulary the
LLM answers in is the task's ``answer_words`` (``yes``/``no`` for hate speech, the label names for
the others), so constrained decoding and parsing both work in that vocabulary and map word ``i`` to
label ``i``.

Three ways to constrain the answer, chosen by the client's ``constrain`` option:

``"json_schema"``
    The OpenAI ``response_format``, a JSON schema whose ``label`` is an enum of the answer words.
    Understood by OpenAI, vLLM, llama.cpp's server and Ollama.
``"grammar"``
    A GBNF grammar (llama.cpp's ``grammar`` request field) that admits only the bare answer words:
    the fewest generated tokens, but llama.cpp only.
``"none"``
    No constraint; the answer is read by :func:`read_answer`'s robust parsing.

An answer that names no label, or more than one, is no answer: it is never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from streamcascade.models.tasks import TASKS, Task

CONSTRAIN_MODES = ("json_schema", "grammar", "none")

_SYSTEM = (
    "You are a careful annotator who classifies short texts. {question} "
    "Answer with exactly one of: {choices}. Do not explain."
)
_SYSTEM_JSON = _SYSTEM + ' Reply as JSON: {{"label": "<one of {choices}>"}}.'
_USER = "Text: {text}"


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """The messages for one task.

    Parameters
    ----------
    task
        The task whose question and answer words the prompt uses.
    constrain
        ``"json_schema"``, ``"grammar"`` or ``"none"`` (see the module docstring).
    max_text_chars
        Longer texts are cut to this many characters (a small local model has a small context);
        the cut is stated in the prompt so the model knows the text goes on.

    >>> t = PromptTemplate(TASKS["imdb"], constrain="grammar")
    >>> [m["role"] for m in t.messages("Great film.")]
    ['system', 'user']
    >>> t.constraint()
    {'grammar': 'root ::= "negative" | "positive"'}
    """

    task: Task
    constrain: str = "json_schema"
    max_text_chars: int = 2000

    def __post_init__(self) -> None:
        if self.constrain not in CONSTRAIN_MODES:
            raise ValueError(f"constrain must be one of {CONSTRAIN_MODES}, got {self.constrain!r}")
        if self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be positive, got {self.max_text_chars}")

    @property
    def choices(self) -> str:
        return ", ".join(self.task.answer_words)

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat messages that ask about ``text``."""
        if len(text) > self.max_text_chars:
            text = text[: self.max_text_chars] + " [...]"
        system = _SYSTEM_JSON if self.constrain == "json_schema" else _SYSTEM
        return [
            {
                "role": "system",
                "content": system.format(question=self.task.question, choices=self.choices),
            },
            {"role": "user", "content": _USER.format(text=text)},
        ]

    def constraint(self) -> dict[str, Any]:
        """The request fields that constrain the answer to the label vocabulary."""
        words = list(self.task.answer_words)
        if self.constrain == "json_schema":
            schema = {
                "type": "object",
                "properties": {"label": {"type": "string", "enum": words}},
                "required": ["label"],
                "additionalProperties": False,
            }
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "label", "strict": True, "schema": schema},
                }
            }
        if self.constrain == "grammar":
            return {"grammar": "root ::= " + " | ".join(json.dumps(w) for w in words)}
        return {}


def read_answer(task: Task, raw: str) -> int | None:
    """The label index ``raw`` names, or ``None`` when it names none or more than one.

    A JSON object with a ``label`` field is read first (the constrained form; an answer word or a
    label name); otherwise the answer words are looked for as whole words, case-insensitively.
    Exactly one distinct label must be named: ``"positive or negative"`` is no answer.

    >>> imdb = TASKS["imdb"]
    >>> read_answer(imdb, '{"label": "positive"}'), read_answer(imdb, "Negative.")
    (1, 0)
    >>> read_answer(imdb, "It is positive, not negative") is None
    True
    >>> read_answer(TASKS["hatespeech"], "No") , read_answer(TASKS["hatespeech"], "nothing")
    (0, None)
    """
    text = raw.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            label = value.get("label")
            return _exact(task, label) if isinstance(label, str) else None
    found = {i for i, pattern in enumerate(_patterns(task)) if pattern.search(text)}
    return found.pop() if len(found) == 1 else None


def _exact(task: Task, word: str) -> int | None:
    key = word.strip().lower()
    for i, (answer_word, name) in enumerate(zip(task.answer_words, task.labels.names, strict=True)):
        if key in (answer_word.lower(), name.lower()):
            return i
    return None


_PATTERN_CACHE: dict[tuple[str, ...], list[re.Pattern[str]]] = {}


def _patterns(task: Task) -> list[re.Pattern[str]]:
    # Only the answer words: the question asks for them, and a label name may contain another
    # label's word ("noHate" and "hate"), which would make every answer ambiguous.
    key = task.answer_words
    patterns = _PATTERN_CACHE.get(key)
    if patterns is None:
        patterns = [
            re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE) for word in key
        ]
        _PATTERN_CACHE[key] = patterns
    return patterns


def builtin_templates(constrain: str = "json_schema") -> dict[str, PromptTemplate]:
    """A template for each of the shared streams' tasks."""
    return {name: PromptTemplate(task, constrain=constrain) for name, task in TASKS.items()}
