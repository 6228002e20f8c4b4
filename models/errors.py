"""Every error streamcascade raises on purpose derives from :class:`StreamcascadeError`.

The tree::

    StreamcascadeError
    ├── ConfigurationError        a setting is missing or wrong
    ├── KafkaLauncherError        the local broker could not be fetched, started or stopped
    ├── UnknownLabelError         a label outside the task's label set
    ├── ModelStateError           model state bytes that are corrupt, unsigned or of another shape
    ├── ModelFileError            an exported model file that is missing, corrupt or fails parity
    ├── LLMError                  the LLM backend failed
    │   ├── LLMTimeoutError       no answer within the timeout, after retries
    │   ├── LLMUnavailableError   the circuit breaker is open, or the server cannot be reached
    │   ├── LLMResponseError      an answer that cannot be read (bad JSON, no choices)
    │   └── LLMServerError        the local LLM server could not be started or stopped
    └── RecordError               a Kafka record the operator cannot use (becomes a dead letter)

Errors carry their context as attributes, and never a secret.
"""

from __future__ import annotations

from collections.abc import Sequence


class StreamcascadeError(Exception):
    """Root of streamcascade's exceptions."""


class ConfigurationError(StreamcascadeError):
    """A setting is missing, malformed or inconsistent."""


class KafkaLauncherError(StreamcascadeError):
    """The local Kafka broker could not be fetched, started or stopped.

    ``log_tail`` holds the last lines of the broker's log when they explain the failure.
    """

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message + (f"\n--- broker log (tail) ---\n{log_tail}" if log_tail else ""))


class UnknownLabelError(StreamcascadeError, ValueError):
    """A label that is not one of the task's labels."""

    def __init__(self, label: str, known: Sequence[str]) -> None:
        self.label = label
        self.known = tuple(known)
        super().__init__(f"unknown label {label!r}; the task's labels are {list(self.known)}")


class ModelStateError(StreamcascadeError):
    """Model state that cannot be loaded: corrupt, unsigned, or made for another configuration."""


class ModelFileError(StreamcascadeError):
    """An exported model file that is missing, corrupt, or fails its parity check."""


class LLMError(StreamcascadeError):
    """The LLM backend failed to answer."""


class LLMTimeoutError(LLMError):
    """No answer within the configured timeout, after the configured retries."""


class LLMUnavailableError(LLMError):
    """The server cannot be reached, or the circuit breaker is open."""


class LLMResponseError(LLMError):
    """The server answered with something that cannot be read."""


class RecordError(StreamcascadeError):
    """A Kafka record the operator cannot use; it becomes a dead letter with :attr:`reason`.

    ``reason`` is one of the short codes in :mod:`streamcascade.operators.dead_letters`;
    ``detail`` says what was wrong, never quoting more than a short prefix of the record.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LLMServerError(LLMError):
    """The local LLM server could not be started, became unready, or could not be stopped.

    ``log_tail`` holds the last lines of the server's log when they explain the failure.
    """

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        self.log_tail = log_tail
        tail = f"\n--- LLM server log (tail) ---\n{log_tail}" if log_tail else ""
        super().__init__(message + tail)
