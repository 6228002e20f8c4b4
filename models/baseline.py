"""The baseline the learned policy must beat: a static confidence-threshold cascade.

The same stages, warm-up and demonstrations as :class:`~.cascade.Cascade`, but a stage answers
whenever its top class probability is at least a fixed ``threshold``; nothing about deferring is
learned, nothing is explored or audited.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamcascade.models.cascade import Cascade, CascadeConfig
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.tasks import Task
from streamcascade.models.types import Demonstration


class ThresholdCascade(Cascade):
    """A cascade whose stages answer when their confidence reaches ``threshold``."""

    def __init__(self, task: Task, stages: Sequence[Stage], llm: LLMBackend,
                 config: CascadeConfig, threshold: float) -> None:
        super().__init__(task, stages, llm, config)
        self.threshold = float(threshold)

    def _answer_early(self, j: int, proba: np.ndarray, score: np.ndarray) -> np.ndarray:
        return np.asarray(proba.max(axis=1) >= self.threshold)

    def _explores(self) -> bool:
        return False

    def learn(self, demos: Sequence[Demonstration]) -> None:
        # Only the stages learn: the deferral rule is fixed.
        used = [d for d in demos if self.config.feedback_weights.get(d.source, 1.0) > 0]
        if not used:
            return
        texts, labels = [d.event.text for d in used], [d.label for d in used]
        # A stage that stacks on its upstream learns from the upstream's answers before the
        # upstream learns these labels, as at answering time.
        upstream: list[np.ndarray | None] = [None]
        for stage in self.stages[:-1]:
            upstream.append(stage.predict_proba(texts, upstream[-1]))
        for stage, given in zip(self.stages, upstream, strict=True):
            stage.learn(texts, labels, given)
        self.learner.n_learned += len(used)
        self.version += 1


def build_baseline(task: Task, llm: LLMBackend, config: CascadeConfig, threshold: float,
                   **stage_options: dict[str, object]) -> ThresholdCascade:
    """A fresh threshold cascade over the same stage names and warm-up as ``config``."""
    stages = [make_stage(name, task, **stage_options.get(name, {})) for name in config.stages]
    return ThresholdCascade(task, stages, llm, config, threshold)
