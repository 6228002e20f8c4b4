"""A trained first stage and policy as a cascade's state: what ``replay --warm-start`` and a
worker start from.

The state is a whole cascade's (:meth:`Cascade.state_bytes`), so anything that loads a cascade's
state loads it; its metadata gains a ``training`` entry (engine, rows, losses) that loading
ignores. The cascade is built as a replay or a worker builds it (the stages are ``hashed`` alone),
the trained parts are loaded through their public methods, its learner counts the training
events as learned (no warm-up: the stage has learned), and its controller has seen the policy's
inputs of the last events, so its thresholds are solved from the first event.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamcascade.models.cascade import Cascade, CascadeConfig, build_cascade
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.llm.base import LLMAnswer
from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.state import pack_state, unpack_state
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event, LabelSet


class _NoLLM:
    """The cascade's last stage while its state is assembled; never asked."""

    name = "untrained"
    cost = 1.0

    def __init__(self, labels: LabelSet) -> None:
        self.labels = labels

    async def answer(self, events: Sequence[Event]) -> list[LLMAnswer]:
        raise ConfigurationError("a cascade assembled from training answers no events")


def warm_cascade(task: Task, stage: HashedTextStage, policy: DeferralPolicy,
                 policy_inputs: np.ndarray, stage_proba: np.ndarray, n_learned: int,
                 config: CascadeConfig, stage_options: dict[str, Any]) -> Cascade:
    """A cascade of one ``hashed`` stage holding the trained ``stage`` and ``policy``."""
    if list(config.stages) != ["hashed"]:
        raise ConfigurationError(f"training builds a cascade of the hashed stage alone, not "
                                 f"{config.stages}")
    cascade = build_cascade(task, _NoLLM(task.labels), config, hashed=stage_options)
    cascade.stages[0].load_state(stage.state_bytes())
    cascade.policies[0].load_arrays(policy.arrays(), policy.n_updates)
    cascade.learner.n_learned = int(n_learned)
    recent = slice(max(0, len(policy_inputs) - config.controller_window), len(policy_inputs))
    positive = (task.labels.index(task.positive_label)
                if task.metric == "f1" and task.positive_label else None)
    cascade.controller.observe(policy_inputs[recent, None, :].astype(np.float32),
                               None if positive is None else stage_proba[recent, positive])
    return cascade


def state_with_training(cascade: Cascade, training: dict[str, Any]) -> bytes:
    """The cascade's state bytes, its metadata carrying ``training``."""
    meta, arrays = unpack_state(cascade.state_bytes(compress=False))
    meta["training"] = training
    return pack_state(meta, arrays, compress=True)


def training_metadata(data: bytes) -> dict[str, Any] | None:
    """The ``training`` entry of a state written by :func:`state_with_training`, if any."""
    meta, _ = unpack_state(data)
    training = meta.get("training")
    return training if isinstance(training, dict) else None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
