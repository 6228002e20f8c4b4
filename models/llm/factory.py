"""One place that turns command-line or settings options into an LLM backend."""

from __future__ import annotations

from pathlib import Path

from streamcascade.models.errors import ConfigurationError
from streamcascade.models.llm.base import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, LLMBackend
from streamcascade.models.tasks import Task


def make_llm(
    task: Task,
    *,
    recorded: str | None = None,
    records_path: Path | None = None,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    hedge: bool | None = None,
) -> LLMBackend:
    """A recorded backend (``recorded`` names the answers' key in the dataset's ``llm`` field, read
    from ``records_path``) or a live OpenAI-compatible one (``url`` and ``model``); exactly one.

    ``concurrency``, ``timeout`` (of one request), ``deadline`` (of one event) and ``hedge`` are
    the live client's (see :class:`~streamcascade.models.llm.openai.OpenAIChatLLM`); ``None``
    keeps its default. A recorded backend answers at once and takes none of them."""
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
    return OpenAIChatLLM(
        url, model, task, api_key=api_key,
        concurrency=DEFAULT_CONCURRENCY if concurrency is None else concurrency,
        timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
        deadline=deadline, hedge=True if hedge is None else hedge,
    )  # fmt: skip
