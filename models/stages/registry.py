"""Stage factories by name: ``make_stage("hashed", task)``.

A factory is any callable ``factory(task, **options) -> Stage``. Add one with
:func:`register_stage` (the stages here are ``"hashed"``, ``"onnx"`` and ``"river"``); unknown
names and options are configuration errors, raised before a stream starts.

>>> from streamcascade.models.tasks import TASKS
>>> make_stage("hashed", TASKS["imdb"], n_features=2**12).name
'hashed'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamcascade.models.errors import ConfigurationError
from streamcascade.models.stages.base import Stage
from streamcascade.models.tasks import Task

StageFactory = Callable[..., Stage]

_FACTORIES: dict[str, StageFactory] = {}


def register_stage(name: str, factory: StageFactory) -> None:
    """Make ``make_stage(name, ...)`` build stages with ``factory(task, **options)``."""
    _FACTORIES[name] = factory


def stage_names() -> list[str]:
    """The names :func:`make_stage` knows."""
    return sorted(_FACTORIES)


def make_stage(name: str, task: Task, **options: Any) -> Stage:
    """A fresh, untrained stage ``name`` for ``task``."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigurationError(f"unknown stage {name!r}; known stages: {stage_names()}")
    try:
        return factory(task, **options)
    except TypeError as exc:
        raise ConfigurationError(f"bad options for stage {name!r}: {exc}") from None


def _make_hashed(task: Task, **options: Any) -> Stage:
    from streamcascade.models.stages.hashed_text import HashedTextStage

    return HashedTextStage(task.labels, **options)


register_stage("hashed", _make_hashed)


def _make_onnx(task: Task, **options: Any) -> Stage:
    from streamcascade.models.stages.onnx_encoder import OnnxEncoderStage

    return OnnxEncoderStage(task.labels, **options)


register_stage("onnx", _make_onnx)


def _make_river(task: Task, **options: Any) -> Stage:
    from streamcascade.models.stages.river_stage import RiverStage

    return RiverStage(task.labels, **options)


register_stage("river", _make_river)


def _make_finetune(task: Task, **options: Any) -> Stage:
    from streamcascade.models.stages.finetune import FineTunedStage

    return FineTunedStage(task.labels, **options)


register_stage("finetune", _make_finetune)
