"""The cascade: stages cheapest first, a deferral policy after each, the LLM last.

One event's path: stage 1 answers with class probabilities; its deferral policy estimates the
probability that this answer differs from the LLM's, and the operating-point controller turns it
into the expected quality lost against the LLM if the stage answers (see :mod:`.controller`); if
that is at most the stage's threshold the stage's label is the answer, otherwise the event goes to
the next stage, and in the end to the LLM. A small random share of early answers is *audited*:
the LLM answers them too, and its answer becomes a demonstration (source ``audit``), an unbiased
sample of how good early answers are. Every LLM answer is a demonstration, returned with the
decisions in the :class:`~.protocol.BatchAnswer`: the replay feeds them back to
:meth:`Cascade.learn`, the Kafka operator publishes them to the feedback topic, so one learning
path serves both.

The cascade owns routing; :mod:`.learner` owns the update; neither does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamcascade.models.controller import OperatingPointController
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.learner import AnswerRecord, ImitationLearner
from streamcascade.models.llm.base import (
    DEFAULT_LLM_FAILURE,
    LLM_FAILURE_MODES,
    LLMAnswer,
    LLMBackend,
    ReportsHealth,
)
from streamcascade.models.llm.resilience import backoff_delay
from streamcascade.models.lru import LRUCache
from streamcascade.models.policy import DeferralPolicy, n_stage_extras, stage_extras
from streamcascade.models.protocol import BatchAnswer
from streamcascade.models.referee import Referee
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.state import load_all_or_nothing, pack_state
from streamcascade.models.tasks import Task
from streamcascade.models.training import training_report
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
#: the LLM as the cascade's error, though the LLM is itself wrong on some of them. The loss against
#: ground truth therefore falls below the bound, often well below it: two points of bound is a
#: cautious default, not two points lost.
DEFAULT_MAX_QUALITY_LOSS = 0.02

#: ``wait``'s backoff between asks: exponential with jitter from the first value up to the second.
WAIT_BACKOFF_S = (0.5, 10.0)


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
    ``record_cache`` the number of answered events whose stage outputs are kept for learning;
    ``on_llm_failure`` what becomes of an event the LLM cannot answer (see
    :data:`~.llm.base.LLM_FAILURE_MODES`).
    """

    stages: list[str] = field(default_factory=lambda: ["hashed"])
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
    on_llm_failure: str = DEFAULT_LLM_FAILURE

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
        if self.record_cache < 0:
            raise ConfigurationError(f"record_cache must be >= 0, got {self.record_cache}")
        if self.on_llm_failure not in LLM_FAILURE_MODES:
            raise ConfigurationError(f"on_llm_failure must be one of {LLM_FAILURE_MODES}, got "
                                     f"{self.on_llm_failure!r}")

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


@dataclass
class _Batch:
    """One batch on its way through the cascade. The per-event fields have one row per event,
    in the events' order (row ``i`` is event ``i``'s path so far); ``waiting`` and ``audited``
    hold event indices."""

    events: Sequence[Event]
    texts: list[str]
    lengths: np.ndarray  # the texts' lengths (a policy input)
    version: int  # the model that routes this batch; learning may go on while the LLM is awaited
    warming: bool  # still warming up: no stage answers
    explore: float  # the share of would-be early answers deferred anyway
    probas: list[list[np.ndarray | None]]  # [event][stage]: the stage's probabilities, if it ran
    p_wrong: np.ndarray  # (n, stages): the policy's P(disagree with the LLM); nan if not run
    policy_inputs: np.ndarray  # (n, stages, width): what each policy read; nan if not run
    exit_at: np.ndarray  # the stage that answered; the number of stages for the LLM
    labels: np.ndarray  # the answer's label index; -1 for none
    confidence: np.ndarray
    cost: np.ndarray
    paths: list[list[str]]  # the names of the places the event went through
    waiting: np.ndarray  # the events no stage has answered (after routing: the LLM's to answer)
    audited: np.ndarray  # early answers also sent to the LLM
    llm_labels: list[int | None]  # the LLM's answer, where it was asked and answered
    errors: list[str | None]  # why the LLM gave no answer to a deferred event
    degraded_at: np.ndarray  # the stage that answered in the LLM's stead; -1 where none did
    positive_share: np.ndarray | None = None  # the first stage's P(positive class), for F1

    @classmethod
    def start(cls, events: Sequence[Event], n_stages: int, width: int, *, version: int,
              warming: bool, explore: float) -> _Batch:
        n = len(events)
        texts = [e.text for e in events]
        return cls(
            events=events, texts=texts, version=version, warming=warming, explore=explore,
            lengths=np.array([len(t) for t in texts], dtype=np.float64),
            probas=[[None] * n_stages for _ in range(n)],
            p_wrong=np.full((n, n_stages), np.nan),
            policy_inputs=np.full((n, n_stages, width), np.nan, dtype=np.float32),
            exit_at=np.full(n, n_stages), labels=np.full(n, -1), confidence=np.ones(n),
            cost=np.zeros(n), paths=[[] for _ in range(n)], waiting=np.arange(n),
            audited=np.arange(0), llm_labels=[None] * n, errors=[None] * n,
            degraded_at=np.full(n, -1))

    def audited_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.events), dtype=bool)
        mask[self.audited] = True
        return mask


class Cascade:
    """Routes events through ``stages`` then ``llm``; learns from demonstrations.

    A :class:`~.protocol.StreamModel`: a driver needs nothing else of it.
    """

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
        # What each recently answered event looked like to the stages, for learning from it.
        self._records: LRUCache[str, AnswerRecord] = LRUCache(config.record_cache)

    @property
    def stage_names(self) -> list[str]:
        """Every place an answer can come from, cheapest first (the LLM last)."""
        return [s.name for s in self.stages] + [self.llm.name]

    def health(self) -> dict[str, Any]:
        """How the LLM is doing, for metrics (see :class:`~.llm.base.ReportsHealth`); empty for a
        backend that cannot say."""
        return self.llm.health() if isinstance(self.llm, ReportsHealth) else {}

    def training_report(self) -> dict[str, dict[str, int]]:
        """How the stages that train in the background keep up, for metrics (see
        :class:`~.training.ReportsTraining`); empty when none does."""
        return training_report(self.stages)

    def preview(self, events: Sequence[Event]) -> list[tuple[int, float]]:
        """What the stages say of ``events`` without the LLM: per event, the last stage's label
        and its probability (each stage given its upstream's answers, as when answering).
        Changes nothing (no routing, no random draw, no learning): a driver compares model
        versions with it."""
        if not events:
            return []
        texts = [e.text for e in events]
        proba: np.ndarray | None = None
        for stage in self.stages:
            proba = stage.predict_proba(texts, proba)
        assert proba is not None  # (a cascade has at least one stage)
        said = proba.argmax(axis=1)
        return [(int(label), float(proba[i, label])) for i, label in enumerate(said.tolist())]

    # -- routing ----------------------------------------------------------------------------------

    def _answer_early(self, j: int, proba: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Which events stage ``j`` answers: expected loss at most its threshold."""
        return np.asarray(score <= self.controller.thresholds[j])

    def _explores(self) -> bool:
        """Whether this cascade explores and audits (a fixed-rule baseline does neither)."""
        return True

    async def answer(self, events: Sequence[Event],
                     on_early: Callable[[list[Decision]], None] | None = None) -> BatchAnswer:
        """Answer a batch of events; deferred (and audited) ones are sent to the LLM together.

        ``on_early`` is called with the early answers (those no LLM call touches) before the LLM
        is asked, so that a caller can write them without waiting for the LLM's latency; they are
        also among the returned decisions, which are in the order of ``events``. The returned
        demonstrations are the LLM's answers, to learn from."""
        if not events:
            return BatchAnswer([])
        batch = _Batch.start(
            events, len(self.stages), max(p.n_features for p in self.policies),
            version=self.version, warming=self.learner.warming_up,
            explore=self.learner.exploration_rate if self._explores() else 0.0)
        self._route(batch)
        self._pick_audits(batch)
        final: dict[int, Decision] = {}
        if on_early is not None:
            final = self._final_early_decisions(batch)
            if final:
                on_early(list(final.values()))
        demonstrations = await self._ask_llm(batch)
        self._remember(batch)
        return BatchAnswer(self._decisions(batch, final), demonstrations)

    def _route(self, batch: _Batch) -> None:
        """Each stage in turn, on the events no stage before it answered."""
        upstream: np.ndarray | None = None  # the previous stage's probabilities, all events
        for j, stage in enumerate(self.stages):
            if batch.waiting.size == 0:
                break
            upstream = self._run_stage(j, stage, batch, upstream)

    def _run_stage(self, j: int, stage: Stage, batch: _Batch,
                   upstream: np.ndarray | None) -> np.ndarray:
        """Stage ``j`` on the waiting events: its answers, its policy's reading of them, and the
        early answers it gives; returns the stage's probabilities for the next stage."""
        at = batch.waiting
        texts = [batch.texts[i] for i in at]
        proba = stage.predict_proba(texts, None if upstream is None else upstream[at])
        if upstream is None:
            upstream = np.empty((len(batch.events), proba.shape[1]))
        upstream[at] = proba
        policy = self.policies[j]
        x = policy.features(proba, batch.lengths[at], stage_extras(stage, texts))
        batch.p_wrong[at, j] = policy.defer_proba_of(x)
        score = self.controller.scores(j, x)
        batch.policy_inputs[at, j, : x.shape[1]] = x
        if j == 0 and self._positive is not None:
            batch.positive_share = proba[:, self._positive]
        for row, i in enumerate(at.tolist()):
            batch.probas[i][j] = proba[row]
            batch.paths[i].append(stage.name)
        batch.cost[at] += stage.cost
        early = self._stops_here(j, proba, score, batch)
        answered = at[early]
        batch.exit_at[answered] = j
        batch.labels[answered] = proba[early].argmax(axis=1)
        batch.confidence[answered] = proba[early].max(axis=1)
        batch.waiting = at[~early]
        return upstream

    def _stops_here(self, j: int, proba: np.ndarray, score: np.ndarray,
                    batch: _Batch) -> np.ndarray:
        """Which of the events at stage ``j`` it answers: none while warming up; of those its
        threshold lets through, a random ``explore`` share is deferred anyway, so that the
        policy keeps learning where it would answer."""
        if batch.warming:
            return np.zeros(len(proba), dtype=bool)
        early = self._answer_early(j, proba, score)
        if batch.explore > 0 and early.any():
            early &= self._rng.random(len(proba)) >= batch.explore
        return early

    def _pick_audits(self, batch: _Batch) -> None:
        """A random ``audit_rate`` share of the early answers goes to the LLM too."""
        early = np.flatnonzero(batch.exit_at < len(self.stages))
        if early.size and self.config.audit_rate > 0 and self._explores():
            batch.audited = early[self._rng.random(early.size) < self.config.audit_rate]
        else:
            batch.audited = early[:0]

    def _final_early_decisions(self, batch: _Batch) -> dict[int, Decision]:
        """The early answers no LLM call will change (the audited ones may), by event."""
        final = np.setdiff1d(np.flatnonzero(batch.exit_at < len(self.stages)), batch.audited)
        return {i: self._decision(batch, i, int(batch.exit_at[i])) for i in final.tolist()}

    async def _ask_llm(self, batch: _Batch) -> list[Demonstration]:
        """One LLM call for the deferred events and the audited ones; every answer it gives is
        a demonstration. A deferred event it does not answer is handled as ``on_llm_failure``
        says."""
        asked = np.concatenate([batch.waiting, batch.audited])
        if not asked.size:
            return []
        events = [batch.events[i] for i in asked.tolist()]
        answers = self._checked(await self.llm.answer(events), int(asked.size))
        demonstrations: list[Demonstration] = []
        n_deferred = batch.waiting.size
        if self.config.on_llm_failure == "wait":
            await self._until_answered(events[:n_deferred], answers)
        for pos, (i, ans) in enumerate(zip(asked.tolist(), answers, strict=True)):
            # Priced in the cascade's units (the LLM's ``cost`` or its configured price), once
            # for each request the answer was charged for (a hedged one, twice); an answer's own
            # cost may be money, and is 0 when no call was made.
            batch.cost[i] += self.llm_cost * ans.calls if ans.cost > 0 else 0.0
            batch.llm_labels[i] = ans.label
            is_audit = pos >= n_deferred
            batch.paths[i].append(self.llm.name + (":audit" if is_audit else ""))
            if ans.label is not None:
                source = SOURCE_AUDIT if is_audit else SOURCE_LLM
                demonstrations.append(Demonstration(batch.events[i], int(ans.label), source))
            if not is_audit:
                batch.labels[i] = -1 if ans.label is None else ans.label
                batch.errors[i] = ans.error
                if ans.label is None and self.config.on_llm_failure == "degrade":
                    self._degrade(batch, i)
            elif ans.label is not None:
                # The audit's call is paid for: its answer is the event's answer (the stage's
                # own answer stays in the record, where the audit measures it).
                batch.labels[i], batch.confidence[i] = ans.label, 1.0
        return demonstrations

    async def _until_answered(self, events: Sequence[Event], answers: list[LLMAnswer]) -> None:
        """``wait``: ask the LLM again, with backoff, about the events whose answer failed in a
        way that asking later may mend, until none is left; ``answers[k]`` is ``events[k]``'s,
        replaced in place."""
        attempt = 0
        while again := [k for k in range(len(events))
                        if answers[k].label is None and answers[k].retryable]:
            base, cap = WAIT_BACKOFF_S
            await asyncio.sleep(backoff_delay(attempt, base=base, cap=cap))
            fresh = self._checked(await self.llm.answer([events[k] for k in again]), len(again))
            for k, answer in zip(again, fresh, strict=True):
                answers[k] = answer
            attempt += 1

    def _degrade(self, batch: _Batch, i: int) -> None:
        """``degrade``: event ``i``'s answer from the stage, of those it went through, that its
        policy finds least likely to disagree with the LLM (the later one on a tie)."""
        ran = [j for j in range(len(self.stages)) if batch.probas[i][j] is not None]
        p_wrong = np.nan_to_num(batch.p_wrong[i], nan=np.inf)
        j = min(reversed(ran), key=lambda k: float(p_wrong[k]))
        proba = batch.probas[i][j]
        assert proba is not None
        batch.degraded_at[i] = j
        batch.labels[i] = int(proba.argmax())
        batch.confidence[i] = float(proba.max())

    def _remember(self, batch: _Batch) -> None:
        """What learning needs later: the policies' inputs for the controller's window (not while
        warming up: nothing is answered early then) and each event's record."""
        if not batch.warming:
            self.controller.observe(batch.policy_inputs, batch.positive_share)
        s = len(self.stages)
        audited = batch.audited_mask()
        for i, event in enumerate(batch.events):
            j = int(batch.exit_at[i])
            label = int(batch.labels[i])
            self._records.put(event.id, AnswerRecord(
                batch.probas[i], j, float(batch.p_wrong[i, j]) if j < s else float("nan"),
                batch.llm_labels[i], label if label >= 0 else None, bool(audited[i])))

    def _decisions(self, batch: _Batch, final: dict[int, Decision]) -> list[Decision]:
        """One decision per event: those already given to ``on_early``, and the rest."""
        # An audited event the LLM answered is the LLM's answer (where the call failed, the
        # stage's stands); its record keeps the stage it would have left.
        llm_answered = np.array([label is not None for label in batch.llm_labels])
        answered_by = np.where(batch.audited_mask() & llm_answered, len(self.stages),
                               batch.exit_at)
        answered_by = np.where(batch.degraded_at >= 0, batch.degraded_at, answered_by)
        return [final[i] if i in final else self._decision(batch, i, int(answered_by[i]))
                for i in range(len(batch.events))]

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

    def _decision(self, batch: _Batch, i: int, stage_index: int) -> Decision:
        """Event ``i``'s decision, answered at ``stage_index`` (the number of stages: the LLM)."""
        stage = self.stages[stage_index].name if stage_index < len(self.stages) else self.llm.name
        label = int(batch.labels[i])
        known = label >= 0
        return Decision(event_id=batch.events[i].id,
                        label=self.task.labels.name(label) if known else None,
                        label_index=label if known else None, stage=stage,
                        stage_index=stage_index, confidence=float(batch.confidence[i]),
                        cost=float(batch.cost[i]), path=batch.paths[i],
                        model_version=batch.version, error=batch.errors[i],
                        degraded=bool(batch.degraded_at[i] >= 0))

    # -- learning ---------------------------------------------------------------------------------

    def learn(self, demos: Sequence[Demonstration]) -> None:
        """The imitation-learning update from expert labels (any source)."""
        k = len(self.task.labels)
        for demo in demos:
            if not 0 <= demo.label < k:
                raise ValueError(f"demonstration label {demo.label} is not in 0..{k - 1}")
        # Each demo's record, read once: a read makes a record the newest in the cache.
        records = {d.event.id: r for d in demos if (r := self._records.get(d.event.id)) is not None}
        if self.learner.update(demos, records):
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
        load_all_or_nothing(data, self._shape(), lambda: self.state_bytes(compress=False),
                            self._load, "cascade")
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
    ``build_cascade(task, llm, config, hashed={"n_features": 2**20})``.
    """
    unknown = set(stage_options) - set(config.stages)
    if unknown:
        raise ConfigurationError(f"options given for stages not in the cascade: {sorted(unknown)}")
    stages = [make_stage(name, task, **stage_options.get(name, {})) for name in config.stages]
    return Cascade(task, stages, llm, config)
