"""The cascade: stages cheapest first, a deferral policy after each, the LLM last.

One event's path: stage 1 answers with class probabilities; its deferral policy estimates the
probability that this answer differs from the LLM's, and the operating-point controller turns it
into the expected quality lost against the LLM if the stage answers (see :mod:`.controller`); if
that is at most the stage's threshold the stage's label is the answer, otherwise the event goes to
the next stage, and in the end to the LLM. A small random share of early answers is *audited*:
the LLM answers them too, and its answer becomes a demonstration (source ``audit``), an unbiased
sample of how good early answers are. Every LLM answer is queued as a demonstration
(:meth:`Cascade.take_demonstrations`): the replay feeds them back to :meth:`Cascade.learn`, the
Kafka operator publishes them to the feedback topic, so one learning path serves both.

The cascade owns routing; :mod:`.learner` owns the update; neither does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.models.controller import OperatingPointController
from streamcascade.models.learner import AnswerRecord, ImitationLearner
from streamcascade.models.llm.base import LLMAnswer, LLMBackend
from streamcascade.models.policy import DeferralPolicy, n_stage_extras, stage_extras
from streamcascade.models.referee import Referee
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.state import expect, pack_state, unpack_state
from streamcascade.models.tasks import Task
from streamcascade.models.types import (
    SOURCE_AUDIT,
    SOURCE_GROUND_TRUTH,
    SOURCE_LLM,
    Decision,
    Demonstration,
    Event,
)

#: The operating point when none is given: an expected loss of at most two points against the LLM.
#: The controller's loss is an upper bound: without ground truth it counts every disagreement with
#: the LLM as the cascade's error, though the LLM is itself wrong on some of them. On the three
#: shared streams the loss measured against ground truth was a third or less of this bound, so two
#: points of bound kept the measured loss within one (README, "Measured").
DEFAULT_MAX_QUALITY_LOSS = 0.02


@dataclass
class CascadeConfig:
    """Everything that shapes a cascade; plain data (see :meth:`to_dict`).

    The operating point is one of ``mu`` (the paper's raw cost coefficient), ``target_llm_share``
    (share of events sent to the LLM, audits included) or ``max_quality_loss`` (largest expected
    loss of the task's metric against the LLM alone: 0.01 is one point); when none is given it is
    ``max_quality_loss=0.02`` (see :data:`DEFAULT_MAX_QUALITY_LOSS`).

    ``warmup`` demonstrations are learned before any stage answers; ``exploration`` is the share
    of would-be early answers deferred anyway, decaying by ``exploration_decay`` per
    demonstration; ``audit_rate`` is the share of early answers also sent to the LLM (their
    importance weight is capped at ``max_importance``; an audit buys little quality, as early
    answers are mostly right, so 1% by default); ``calibration`` is the paper's offset on the
    expert's *defer* target; ``feedback_weights`` weighs (or, at 0, ignores) each source of
    demonstrations; ``stage_costs`` overrides the price of a stage or of the LLM by name;
    ``controller_window`` is the number of recent events the thresholds are solved over;
    ``record_cache`` the number of answered events whose stage outputs are kept for learning.
    """

    stages: list[str] = field(default_factory=lambda: ["river"])
    mu: float | None = None
    target_llm_share: float | None = None
    max_quality_loss: float | None = None
    warmup: int = 100
    exploration: float = 0.3
    exploration_decay: float = 0.995
    audit_rate: float = 0.01
    max_importance: float = 10.0
    calibration: float = 0.0
    policy_learning_rate: float = 0.3
    feedback_weights: dict[str, float] = field(default_factory=lambda: {
        SOURCE_LLM: 1.0, SOURCE_AUDIT: 1.0, SOURCE_GROUND_TRUTH: 1.0})
    stage_costs: dict[str, float] = field(default_factory=dict)
    controller_window: int = 1000
    record_cache: int = 8192
    seed: int = 0

    def operating_point(self) -> tuple[str, float]:
        """``(mode, value)`` of the controller; exactly one target may be set."""
        given = [(m, v) for m, v in (("mu", self.mu), ("llm_share", self.target_llm_share),
                                     ("quality_loss", self.max_quality_loss)) if v is not None]
        if len(given) > 1:
            raise ConfigurationError(f"give one operating point, not {[m for m, _ in given]}")
        mode, value = given[0] if given else ("quality_loss", DEFAULT_MAX_QUALITY_LOSS)
        if value < 0 or (mode == "llm_share" and value > 1):
            raise ConfigurationError(f"operating point {mode}={value} is out of range")
        return mode, float(value)

    def validate(self) -> None:
        self.operating_point()
        if not self.stages:
            raise ConfigurationError("a cascade needs at least one stage before the LLM")
        for name, rate in (("audit_rate", self.audit_rate), ("exploration", self.exploration),
                           ("exploration_decay", self.exploration_decay)):
            if not 0 <= rate <= 1:
                raise ConfigurationError(f"{name} must be in [0, 1], got {rate}")
        if self.warmup < 0 or self.controller_window < 50:
            raise ConfigurationError("warmup must be >= 0 and controller_window >= 50")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(f"unknown cascade settings: {sorted(unknown)}")
        return cls(**data)


def _is_index(label: object, k: int) -> bool:
    """Whether ``label`` is an index of one of ``k`` labels (an integer, not a bool)."""
    return (isinstance(label, int | np.integer) and not isinstance(label, bool)
            and 0 <= int(label) < k)


class Cascade:
    """Routes events through ``stages`` then ``llm``; learns from demonstrations."""

    def __init__(self, task: Task, stages: Sequence[Stage], llm: LLMBackend,
                 config: CascadeConfig) -> None:
        config.validate()
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"stage names must be distinct, got {names}")
        for stage in stages:
            if stage.labels != task.labels:
                raise ConfigurationError(f"stage {stage.name!r} has labels {stage.labels.names}, "
                                         f"the task has {task.labels.names}")
        self.task = task
        self.stages = list(stages)
        self.llm = llm
        self.config = config
        self.version = 0
        for stage in self.stages:
            stage.cost = float(config.stage_costs.get(stage.name, stage.cost))
        self.llm_cost = float(config.stage_costs.get(llm.name, llm.cost))
        k = len(task.labels)
        self.policies = [DeferralPolicy(k, config.policy_learning_rate,
                                        calibration=config.calibration,
                                        n_extra=n_stage_extras(s)) for s in self.stages]
        self.referees = [Referee(k) for _ in self.stages]
        mode, value = config.operating_point()
        next_costs = [s.cost for s in self.stages[1:]] + [self.llm_cost]
        self.controller = OperatingPointController(
            self.policies, self.referees, mode, value, next_costs, audit_rate=config.audit_rate,
            positive=task.labels.index(task.positive_label)
            if task.metric == "f1" and task.positive_label else None,
            window=config.controller_window)
        self.learner = ImitationLearner(
            self.stages, self.policies, self.referees, self.controller, warmup=config.warmup,
            exploration=config.exploration, exploration_decay=config.exploration_decay,
            audit_rate=config.audit_rate, max_importance=config.max_importance,
            source_weights=config.feedback_weights)
        self._positive = (task.labels.index(task.positive_label)
                          if task.metric == "f1" and task.positive_label else None)
        self._rng = np.random.default_rng(config.seed)
        self._records: OrderedDict[str, AnswerRecord] = OrderedDict()
        self._pending: list[Demonstration] = []

    # -- routing ----------------------------------------------------------------------------------

    def _answer_early(self, j: int, proba: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Which events stage ``j`` answers: expected loss at most its threshold."""
        return np.asarray(score <= self.controller.thresholds[j])

    def _explores(self) -> bool:
        return True

    async def answer(self, events: Sequence[Event],
                     on_early: Callable[[list[Decision]], None] | None = None) -> list[Decision]:
        """Answer a batch of events; deferred (and audited) ones are sent to the LLM together.

        ``on_early`` is called with the early answers (those no LLM call touches) before the LLM
        is asked, so that a caller can write them without waiting for the LLM's latency; they are
        also in the returned list, which is in the order of ``events``."""
        n, s = len(events), len(self.stages)
        if n == 0:
            return []
        texts = [e.text for e in events]
        lengths = np.array([len(t) for t in texts], dtype=np.float64)
        probas: list[list[np.ndarray | None]] = [[None] * s for _ in range(n)]
        p_wrong = np.full((n, s), np.nan)
        width = max(p.n_features for p in self.policies)
        policy_inputs = np.full((n, s, width), np.nan, dtype=np.float32)
        exit_at = np.full(n, s)
        labels = np.full(n, -1)
        confidence = np.ones(n)
        cost = np.zeros(n)
        paths: list[list[str]] = [[] for _ in range(n)]
        positive_share: np.ndarray | None = None
        warming = self.learner.warming_up
        # The model that routes this batch; learning may go on while the LLM is awaited.
        version = self.version
        explore = self.learner.exploration_rate if self._explores() else 0.0
        remaining = np.arange(n)
        upstream: np.ndarray | None = None  # the previous stage's probabilities, all events
        for j, stage in enumerate(self.stages):
            if remaining.size == 0:
                break
            batch = [texts[i] for i in remaining]
            proba = stage.predict_proba(batch, None if upstream is None else upstream[remaining])
            if upstream is None:
                upstream = np.empty((n, proba.shape[1]))
            upstream[remaining] = proba
            x = self.policies[j].features(proba, lengths[remaining], stage_extras(stage, batch))
            p_wrong[remaining, j] = self.policies[j].defer_proba_of(x)
            score = self.controller.scores(j, x)
            policy_inputs[remaining, j, : x.shape[1]] = x
            if j == 0 and self._positive is not None:
                positive_share = proba[:, self._positive]
            for row, at in enumerate(remaining.tolist()):
                probas[at][j] = proba[row]
                cost[at] += stage.cost
                paths[at].append(stage.name)
            early = (np.zeros(len(remaining), bool) if warming
                     else self._answer_early(j, proba, score))
            if explore > 0 and early.any():
                early &= self._rng.random(len(remaining)) >= explore
            answered = remaining[early]
            exit_at[answered] = j
            labels[answered] = proba[early].argmax(axis=1)
            confidence[answered] = proba[early].max(axis=1)
            remaining = remaining[~early]
        early_idx = np.flatnonzero(exit_at < s)
        audited = early_idx[self._rng.random(early_idx.size) < self.config.audit_rate] if (
            early_idx.size and self.config.audit_rate > 0 and self._explores()) else early_idx[:0]
        to_llm = np.concatenate([remaining, audited])
        decided: dict[int, Decision] = {}
        if on_early is not None:
            final = np.setdiff1d(early_idx, audited)
            decided = {i: self._decision(events[i], int(labels[i]), int(exit_at[i]),
                                         float(confidence[i]), float(cost[i]), paths[i], None,
                                         version)
                       for i in final.tolist()}
            if decided:
                on_early(list(decided.values()))
        errors: list[str | None] = [None] * n
        llm_labels: list[int | None] = [None] * n
        if to_llm.size:
            answers = self._checked(await self.llm.answer([events[i] for i in to_llm.tolist()]),
                                    int(to_llm.size))
            n_deferred = remaining.size
            for pos, (i, ans) in enumerate(zip(to_llm.tolist(), answers, strict=True)):
                # Priced in the cascade's units (the LLM's ``cost`` or its configured price); an
                # answer's own cost may be money, and is 0 when no call was made.
                cost[i] += self.llm_cost if ans.cost > 0 else 0.0
                llm_labels[i] = ans.label
                is_audit = pos >= n_deferred
                paths[i].append(self.llm.name + (":audit" if is_audit else ""))
                if ans.label is not None:
                    source = SOURCE_AUDIT if is_audit else SOURCE_LLM
                    self._pending.append(Demonstration(events[i], int(ans.label), source))
                if not is_audit:
                    labels[i] = -1 if ans.label is None else ans.label
                    errors[i] = ans.error
                elif ans.label is not None:
                    # The audit's call is paid for: its answer is the event's answer (the stage's
                    # own answer stays in the record, where the audit measures it).
                    labels[i], confidence[i] = ans.label, 1.0
        if not warming:
            self.controller.observe(policy_inputs, positive_share)
        was_audited = np.zeros(n, dtype=bool)
        was_audited[audited] = True
        for i, event in enumerate(events):
            j = int(exit_at[i])
            self._remember(event.id, AnswerRecord(
                probas[i], j, float(p_wrong[i, j]) if j < s else float("nan"), llm_labels[i],
                int(labels[i]) if labels[i] >= 0 else None, bool(was_audited[i])))
        # An audited event the LLM answered is the LLM's answer (where the call failed, the
        # stage's stands); its record keeps the stage it would have left.
        llm_answered = np.array([label is not None for label in llm_labels])
        answered_by = np.where(was_audited & llm_answered, s, exit_at)
        return [decided[i] if i in decided else
                self._decision(events[i], int(labels[i]), int(answered_by[i]),
                               float(confidence[i]), float(cost[i]), paths[i], errors[i], version)
                for i in range(n)]

    def _checked(self, answers: Sequence[LLMAnswer], n: int) -> list[LLMAnswer]:
        """The backend's answers, one per event asked, each inside the label set: a backend
        that answers too few, or outside the labels, gives no answer for those events rather
        than a batch that fails."""
        if len(answers) != n:  # out of line with the events: none of them can be trusted
            wrong = f"the LLM backend gave {len(answers)} answers for {n} events"
            return [LLMAnswer(None, 0.0, wrong)] * n
        k = len(self.task.labels)
        return [a if a.label is None or _is_index(a.label, k) else
                LLMAnswer(None, a.cost, f"answer {a.label!r} is not one of the {k} labels' "
                          "indices", a.raw)
                for a in answers]

    def _decision(self, event: Event, label: int, stage_index: int, confidence: float,
                  cost: float, path: list[str], error: str | None, version: int) -> Decision:
        stage = self.stages[stage_index].name if stage_index < len(self.stages) else self.llm.name
        known = label >= 0
        return Decision(event_id=event.id, label=self.task.labels.name(label) if known else None,
                        label_index=label if known else None, stage=stage,
                        stage_index=stage_index, confidence=confidence, cost=cost, path=path,
                        model_version=version, error=error)

    def _remember(self, event_id: str, record: AnswerRecord) -> None:
        self._records[event_id] = record
        self._records.move_to_end(event_id)
        while len(self._records) > self.config.record_cache:
            self._records.popitem(last=False)

    def take_demonstrations(self) -> list[Demonstration]:
        """The LLM's answers (deferred and audited events) since the last call, as demos."""
        pending, self._pending = self._pending, []
        return pending

    # -- learning ---------------------------------------------------------------------------------

    def learn(self, demos: Sequence[Demonstration]) -> None:
        """The imitation-learning update from expert labels (any source)."""
        k = len(self.task.labels)
        for demo in demos:
            if not 0 <= demo.label < k:
                raise ValueError(f"demonstration label {demo.label} is not in 0..{k - 1}")
        if self.learner.update(demos, self._records):
            self.version += 1

    # -- state ------------------------------------------------------------------------------------

    def _shape(self) -> dict[str, Any]:
        return {"kind": "cascade", "task": self.task.name, "labels": list(self.task.labels.names),
                "stages": [s.name for s in self.stages]}

    def state_bytes(self, compress: bool = True) -> bytes:
        """All learned state (stages, policies, learner, controller, random generator);
        uncompressed with ``compress=False`` (see :func:`.state.compress_state`)."""
        meta: dict[str, Any] = {
            **self._shape(), "version": self.version, "n_learned": self.learner.n_learned,
            "policy_updates": [p.n_updates for p in self.policies],
            "referee_updates": [p.n_updates for p in self.referees],
            "controller": self.controller.meta(), "rng": self._rng.bit_generator.state,
        }
        arrays: dict[str, np.ndarray] = {}
        for j, (stage, policy) in enumerate(zip(self.stages, self.policies, strict=True)):
            arrays[f"stage{j}"] = np.frombuffer(stage.state_bytes(), dtype=np.uint8)
            for key, value in policy.arrays().items():
                arrays[f"policy{j}_{key}"] = value
            for key, value in self.referees[j].arrays().items():
                arrays[f"referee{j}_{key}"] = value
        for key, value in self.controller.arrays().items():
            arrays[f"controller_{key}"] = value
        return pack_state(meta, arrays, compress=compress)  # the stages' parts are not compressed

    def load_state(self, data: bytes) -> None:
        """Replace all learned state; :class:`ModelStateError` if the bytes are not ours."""
        meta, arrays = unpack_state(data)
        for key, value in self._shape().items():
            expect(meta, key, value)
        # All or nothing: a part that fails restores the whole.
        backup = self.state_bytes(compress=False)
        try:
            self._load(meta, arrays)
        except ModelStateError:
            self._load(*unpack_state(backup))
            raise
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            self._load(*unpack_state(backup))
            raise ModelStateError(f"cascade state is malformed: {exc}") from None
        self._records.clear()

    def _load(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for j, stage in enumerate(self.stages):
            stage.load_state(arrays[f"stage{j}"].tobytes())
        for j, (policy, referee) in enumerate(zip(self.policies, self.referees, strict=True)):
            policy.load_arrays({key: arrays[f"policy{j}_{key}"] for key in policy.arrays()},
                               meta["policy_updates"][j])
            referee.load_arrays({key: arrays[f"referee{j}_{key}"] for key in referee.arrays()
                                 if f"referee{j}_{key}" in arrays}, meta["referee_updates"][j])
        self.controller.load(meta["controller"], {
            "window_x": arrays["controller_window_x"],
            "window_pos": arrays["controller_window_pos"]})
        self.learner.n_learned = int(meta["n_learned"])
        self.version = int(meta["version"])
        self._rng.bit_generator.state = meta["rng"]


def build_cascade(task: Task, llm: LLMBackend, config: CascadeConfig,
                  **stage_options: dict[str, Any]) -> Cascade:
    """A fresh cascade of ``config.stages`` (built by the stage registry) before ``llm``.

    ``stage_options`` maps a stage name to the options of its factory, e.g.
    ``build_cascade(task, llm, config, river={"n_features": 2**20})``.
    """
    unknown = set(stage_options) - set(config.stages)
    if unknown:
        raise ConfigurationError(f"options given for stages not in the cascade: {sorted(unknown)}")
    stages = [make_stage(name, task, **stage_options.get(name, {})) for name in config.stages]
    return Cascade(task, stages, llm, config)
