"""Tasks: the question asked of every event, its labels, and how an LLM's raw answer is read.

The three shared streams are built in. Their recorded answers are read the way the online-cascade
paper's code reads them (see ``shared/datasets/README.md``): a word is searched for in the answer in
a fixed order; an integer string is a class id; anything else, and ``-1``, is no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamcascade.models.types import LabelSet


@dataclass(frozen=True, slots=True)
class Task:
    """A classification task over text events.

    ``answer_words[i]`` is the word whose presence in an LLM's answer means label ``i``; the words
    are tried in ``search_order`` (indices) and the first found wins. ``metric`` is ``"accuracy"``
    or ``"f1"`` (the F1 of ``positive_label``, for skewed tasks).
    """

    name: str
    labels: LabelSet
    question: str
    answer_words: tuple[str, ...]
    search_order: tuple[int, ...]
    metric: str = "accuracy"
    positive_label: str | None = None

    def parse_answer(self, raw: str) -> int | None:
        """The label index an LLM's raw answer names, or ``None`` if it names none.

        >>> TASKS["imdb"].parse_answer("Positive.")
        1
        >>> TASKS["hatespeech"].parse_answer("1"), TASKS["hatespeech"].parse_answer("-1")
        (1, None)
        >>> TASKS["isear"].parse_answer("I think: fear") == TASKS["isear"].labels.index("fear")
        True
        """
        text = raw.strip().lower()
        if re.fullmatch(r"-?[0-9]+", text):
            index = int(text)
            return index if 0 <= index < len(self.labels) else None
        for i in self.search_order:
            if self.answer_words[i] in text:
                return i
        return None


def generic_task(name: str, labels: LabelSet, question: str | None = None) -> Task:
    """A task for a user's own stream: the answer must contain a label name (case-insensitive)."""
    words = tuple(n.lower() for n in labels.names)
    # Longer names first, so that a label that contains another ("unhappy", "happy") wins.
    order = tuple(sorted(range(len(words)), key=lambda i: -len(words[i])))
    return Task(
        name=name,
        labels=labels,
        question=question or f"Classify the text as one of: {', '.join(labels.names)}.",
        answer_words=words,
        search_order=order,
    )


TASKS: dict[str, Task] = {
    "imdb": Task(
        name="imdb",
        labels=LabelSet(("negative", "positive")),
        question="Is the sentiment of this movie review positive or negative?",
        answer_words=("negative", "positive"),
        search_order=(1, 0),
    ),
    "hatespeech": Task(
        name="hatespeech",
        labels=LabelSet(("noHate", "hate")),
        question="Does this sentence from a forum post contain hate speech? Answer yes or no.",
        answer_words=("no", "yes"),
        search_order=(0, 1),
        metric="f1",
        positive_label="hate",
    ),
    "isear": Task(
        name="isear",
        # The order of the paper's class ids, so that recorded integer answers index it directly.
        labels=LabelSet(("joy", "sadness", "anger", "guilt", "shame", "fear", "disgust")),
        question="Which emotion does the person describe: joy, sadness, anger, guilt, shame, "
        "fear or disgust?",
        answer_words=("joy", "sadness", "anger", "guilt", "shame", "fear", "disgust"),
        search_order=(0, 1, 2, 3, 4, 5, 6),
    ),
}
