"""Small generated streams in the shared format, for the core's unit tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "superb", "lovely", "brilliant", "delight"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "poor", "waste"]
MUDDLE = ["meh", "whatever", "someday", "sideways", "maybe", "okayish"]
FILLER = ["the", "film", "plot", "actor", "scene", "story", "movie", "cast"]


def sentiment_stream(n: int, hard_share: float = 0.3, seed: int = 0) -> list[dict[str, object]]:
    """Rows whose easy events are told apart by a sentiment word and whose hard ones are noise.

    Hard events carry only muddled words and a coin-flip label, so no stage can be right on them
    more than half the time; the LLM's recorded answer is the label (a perfect expert).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hard = rng.random() < hard_share
        label = rng.choice(["negative", "positive"])
        if hard:
            words = rng.sample(MUDDLE, 3)
        else:
            words = rng.sample(POSITIVE if label == "positive" else NEGATIVE, 2)
        text = " ".join(rng.sample(FILLER, 3) + words)
        rows.append({"id": i, "text": text, "label": label, "hard": hard,
                     "llm": {"oracle": label, "broken": "no idea"}})
    return rows


def write_stream(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
