"""streamcascade: answer every event of a Kafka topic with an online-learned cascade of models.

Cheap incremental models first, transformer encoders exported to ONNX next, an LLM last; a
deferral policy after each stage learns, by imitation of the LLM and of ground-truth feedback,
when a cheaper stage's answer is good enough.

The public names below are imported on first use (PEP 562), so ``import streamcascade`` stays
cheap and the pure core (:mod:`streamcascade.models`) can be imported without Faust, Kafka or
Prometheus.

>>> import streamcascade
>>> streamcascade.TASKS["imdb"].labels.names
('negative', 'positive')
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamcascade.attach import attach
    from streamcascade.errors import (
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
    from streamcascade.models.cascade import Cascade, CascadeConfig, build_cascade
    from streamcascade.models.llm.factory import make_llm
    from streamcascade.models.protocol import BatchAnswer, StreamModel
    from streamcascade.models.tasks import TASKS, Task
    from streamcascade.models.types import LabelSet
    from streamcascade.settings import Settings

__version__ = "0.1.0"

_ERRORS = "streamcascade.errors"

# Each public name and the module that defines it (its home).
_HOMES: dict[str, str] = {
    "BatchAnswer": "streamcascade.models.protocol",
    "Cascade": "streamcascade.models.cascade",
    "CascadeConfig": "streamcascade.models.cascade",
    "ConfigurationError": _ERRORS,
    "KafkaLauncherError": _ERRORS,
    "LLMError": _ERRORS,
    "LLMResponseError": _ERRORS,
    "LLMServerError": _ERRORS,
    "LLMTimeoutError": _ERRORS,
    "LLMUnavailableError": _ERRORS,
    "LabelSet": "streamcascade.models.types",
    "ModelFileError": _ERRORS,
    "ModelStateError": _ERRORS,
    "RecordError": _ERRORS,
    "Settings": "streamcascade.settings",
    "StreamModel": "streamcascade.models.protocol",
    "StreamcascadeError": _ERRORS,
    "TASKS": "streamcascade.models.tasks",
    "Task": "streamcascade.models.tasks",
    "UnknownLabelError": _ERRORS,
    "attach": "streamcascade.attach",
    "build_cascade": "streamcascade.models.cascade",
    "make_llm": "streamcascade.models.llm.factory",
}

__all__ = [
    "TASKS",
    "BatchAnswer",
    "Cascade",
    "CascadeConfig",
    "ConfigurationError",
    "KafkaLauncherError",
    "LLMError",
    "LLMResponseError",
    "LLMServerError",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "LabelSet",
    "ModelFileError",
    "ModelStateError",
    "RecordError",
    "Settings",
    "StreamModel",
    "StreamcascadeError",
    "Task",
    "UnknownLabelError",
    "__version__",
    "attach",
    "build_cascade",
    "make_llm",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """This package's module type: keeps a public name from being shadowed by its submodule.

    ``attach`` is both a function and the submodule that defines it. Importing a submodule binds
    it on its package, so once anything imported ``streamcascade.attach`` the module would hide
    the function; the function wins instead. The submodule stays reachable through
    ``sys.modules`` and ``importlib.import_module``.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _HOMES and isinstance(value, ModuleType) and value.__name__ == _HOMES[name]:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
