"""One place that turns command-line or settings options into an LLM backend."""

from __future__ import annotations

from pathlib import Path

from streamcascade.errors import ConfigurationError
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.tasks import Task


def make_llm(
    task: Task,
    *,
    recorded: str | None = None,
    records_path: Path | None = None,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
) -> LLMBackend:
    """A recorded backend (``recorded`` names the answers' key in the dataset's ``llm`` field, read
    from ``records_path``) or a live OpenAI-compatible one (``url`` and ``model``); exactly one."""
    if (recorded is None) == (url is None):
        raise ConfigurationError(
            "name exactly one LLM: a recorded one (--llm) or a live one (--llm-url)"
        )
    if recorded is not None:
        if records_path is None:
            raise ConfigurationError("a recorded LLM needs the dataset file its answers come from")
        from streamcascade.models.llm.recorded import RecordedLLM

        return RecordedLLM(records_path, recorded, task)
    if not model:
        raise ConfigurationError("a live LLM needs --llm-model as well as --llm-url")
    from streamcascade.models.llm.openai import OpenAIChatLLM

    assert url is not None
    return OpenAIChatLLM(url, model, task, api_key=api_key)
