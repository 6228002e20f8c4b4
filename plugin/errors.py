"""The public path of streamcascade's exceptions: ``from streamcascade.errors import ...``.

The tree itself lives in :mod:`streamcascade.models.errors`, so that the pure core raises the same
classes without importing anything outside ``models/``.
"""

from streamcascade.models.errors import (
    ConfigurationError,
    KafkaLauncherError,
    LLMError,
    LLMResponseError,
    LLMServerError,
    LLMTimeoutError,
    LLMUnavailableError,
    ModelFileError,
    ModelStateError,
    RecordError,
    StreamcascadeError,
    UnknownLabelError,
)

__all__ = [
    "ConfigurationError",
    "KafkaLauncherError",
    "LLMError",
    "LLMResponseError",
    "LLMServerError",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "ModelFileError",
    "ModelStateError",
    "RecordError",
    "StreamcascadeError",
    "UnknownLabelError",
]
