"""Read streams in the shared format: JSON Lines (optionally gzip), one event per line, in order.

Each line is ``{"id": ..., "text": "...", "label": "...", "llm": {"<model>": "<raw answer>"}}``;
``label`` and ``llm`` are optional (a user's own stream may have neither). Ids become strings, the
form event ids take everywhere else (Kafka keys).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streamcascade.models.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class StreamRow:
    """One row of a stream file."""

    id: str
    text: str
    label: str | None = None
    llm: dict[str, str] = field(default_factory=dict)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_stream(path: Path | str, limit: int | None = None) -> Iterator[StreamRow]:
    """The rows of ``path`` in stream order (at most ``limit``); a clear error for a bad line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"stream file not found: {path}")
    count = 0
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            yield _parse_row(line, path, line_no)
            count += 1


def read_stream(path: Path | str, limit: int | None = None) -> list[StreamRow]:
    """All rows of ``path`` (at most ``limit``)."""
    return list(iter_stream(path, limit))


def _parse_row(line: str, path: Path, line_no: int) -> StreamRow:
    where = f"{path}, line {line_no}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ConfigurationError(f"{where}: expected a JSON object")
    if "id" not in obj or "text" not in obj:
        raise ConfigurationError(f"{where}: every row needs 'id' and 'text'")
    if not isinstance(obj["text"], str):
        raise ConfigurationError(f"{where}: 'text' must be a string")
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        label = str(label)
    llm = obj.get("llm") or {}
    if not isinstance(llm, dict):
        raise ConfigurationError(f"{where}: 'llm' must be an object of model name to answer")
    # A null answer is no recorded answer (not the text "None", which reads as a label).
    answers = {str(k): str(v) for k, v in llm.items() if v is not None}
    return StreamRow(str(obj["id"]), obj["text"], label, answers)


def stream_task_name(path: Path | str) -> str:
    """The task name a stream file's name suggests: ``imdb.jsonl.gz`` → ``imdb``."""
    return Path(path).name.split(".")[0].lower()
