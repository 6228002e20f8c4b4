"""A history of labelled events to train from: JSON Lines (optionally gzip) or Parquet.

Rows are the shared stream format: ``id``, ``text``, ``label`` (ground truth) and ``llm`` (each
model's recorded raw answer). A label source picks which label teaches: ``ground_truth`` or
``llm:<name>`` (read as the online cascade reads that LLM's answers). A row that cannot teach is
counted under its reason and left out, never guessed: no text, no label, a label (or answer)
outside the task's labels, an id seen before (the first one counts), a line that is not a JSON
object with an id.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from streamcascade.models.errors import ConfigurationError, UnknownLabelError
from streamcascade.models.tasks import Task

SKIP_REASONS = ("malformed", "no_text", "no_label", "unknown_label", "duplicate_id",
                "no_features")


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    id: str
    text: str
    label: int


@dataclass
class History:
    events: list[LabelledEvent]
    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip_counts(self) -> dict[str, int]:
        return {reason: int(self.skipped.get(reason, 0)) for reason in SKIP_REASONS}


def parse_label_source(source: str) -> str | None:
    """``None`` for ground truth, else the LLM's name; a clear error for anything else."""
    if source == "ground_truth":
        return None
    kind, _, name = source.partition(":")
    if kind != "llm" or not name:
        raise ConfigurationError(f"--label-source is ground_truth or llm:<name>, not {source!r}")
    return name


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _json_rows(path: Path) -> Iterator[Any]:
    with _open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield None


def _parquet_rows(path: Path) -> Iterator[Any]:
    import duckdb

    con = duckdb.connect()
    try:
        cursor = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
        names = [d[0] for d in cursor.description]
        while batch := cursor.fetchmany(4096):
            yield from (dict(zip(names, row, strict=True)) for row in batch)
    except duckdb.Error as exc:
        raise ConfigurationError(f"{path}: cannot read it as Parquet: {exc}") from None
    finally:
        con.close()


def _label(row: dict[str, Any], task: Task, llm: str | None) -> tuple[str, int | None]:
    """``(reason, label index)``: reason is empty when the row has a usable label."""
    if llm is None:
        name = row.get("label")
        if name is None or name == "":
            return "no_label", None
        try:
            return "", task.labels.index(str(name))
        except UnknownLabelError:
            return "unknown_label", None
    answers = row.get("llm")
    answer = answers.get(llm) if isinstance(answers, dict) else None
    if answer is None:
        return "no_label", None
    index = task.parse_answer(str(answer))
    return ("", index) if index is not None else ("unknown_label", None)


def read_history(path: Path | str, task: Task, label_source: str = "ground_truth",
                 limit: int | None = None) -> History:
    """The usable events of ``path`` (at most ``limit`` rows read), with counts of the rest."""
    path = Path(path)
    llm = parse_label_source(label_source)
    if not path.is_file():
        raise ConfigurationError(f"training input not found: {path}")
    parquet = path.suffix == ".parquet"
    if not parquet and not path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        raise ConfigurationError(f"{path}: expected .jsonl, .jsonl.gz or .parquet")
    history = History([])
    seen: set[str] = set()
    for row in (_parquet_rows(path) if parquet else _json_rows(path)):
        if limit is not None and history.read >= limit:
            break
        history.read += 1
        if not isinstance(row, dict) or row.get("id") is None:
            history.skipped["malformed"] += 1
            continue
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            history.skipped["no_text"] += 1
            continue
        reason, label = _label(row, task, llm)
        if label is None:
            history.skipped[reason] += 1
            continue
        event_id = str(row["id"])
        if event_id in seen:
            history.skipped["duplicate_id"] += 1
            continue
        seen.add(event_id)
        history.events.append(LabelledEvent(event_id, text, label))
    return history
