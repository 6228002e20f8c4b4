"""The imitation-learning update of the online-cascade paper, and the schedules around it.

For every demonstration (an event and a label from the LLM, an audit of an early answer, or
ground truth from a feedback topic):

1. each stage's answer to the event is looked up (kept when the cascade answered it) or recomputed;
2. the expert's action at each stage follows from the LLM's label, as in the paper: *answer* if
   the stage says what the LLM says, *defer* if not; each stage's deferral policy takes one step
   toward that action (once per event, whichever of its labels comes first);
3. where ground truth meets an LLM label that the stage disagreed with, the stage's *referee*
   learns who was right: the LLM is not always, and where the stage is right, answering early
   costs nothing (see :mod:`.controller`);
4. each stage learns the label;
5. an audited early answer tells the controller how often early answers really disagree with the
   LLM, against what the policy predicted; ground truth updates the counts behind the metric.

Around the update: a warm-up (everything goes to the LLM until ``warmup`` demonstrations have been
learned, as in the paper) and an exploration that decays geometrically with each demonstration
(the paper's ``decaying_factor``; here it decays to nothing, so it leaves no LLM-share floor).
Audited answers are rare by design, so they are up-weighted (by the inverse audit rate, clipped)
so that the policy's estimate stays calibrated on the events it answers early.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamcascade.models.controller import OperatingPointController
from streamcascade.models.policy import DeferralPolicy, stage_extras
from streamcascade.models.referee import Referee
from streamcascade.models.stages.base import Stage
from streamcascade.models.types import (
    SOURCE_AUDIT,
    SOURCE_GROUND_TRUTH,
    SOURCE_LLM,
    Demonstration,
)


@dataclass(slots=True)
class AnswerRecord:
    """What the cascade saw when it answered one event, kept (bounded) for the learning step."""

    probas: list[np.ndarray | None]
    exit_stage: int  # index of the stage that answered; len(stages) for the LLM
    p_wrong_exit: float
    llm_label: int | None = None  # the LLM's answer, when it was asked (deferred or audited)
    answer: int | None = None  # the cascade's final answer
    audited: bool = False  # an early answer also sent to the LLM
    imitated: bool = False  # the policies have learned from this event


class ImitationLearner:
    """Updates stages, policies and the controller from demonstrations (no I/O).

    Parameters
    ----------
    stages, policies, controller
        The cascade's parts this learner updates.
    warmup
        Demonstrations to learn before any stage may answer.
    exploration, exploration_decay
        Initial share of would-be early answers deferred anyway, and its decay per demonstration.
    audit_rate, max_importance
        The audit's sampling rate and the largest weight an audited demonstration gets.
    source_weights
        Weight of each demonstration source (0 ignores a source).
    referees
        Per stage, a model of who is right when the stage and the LLM disagree (P(stage right)),
        learned from ground truth only.
    """

    def __init__(self, stages: Sequence[Stage], policies: Sequence[DeferralPolicy],
                 referees: Sequence[Referee], controller: OperatingPointController, *,
                 warmup: int, exploration: float,
                 exploration_decay: float, audit_rate: float, max_importance: float,
                 source_weights: Mapping[str, float]) -> None:
        self.stages = list(stages)
        self.policies = list(policies)
        self.referees = list(referees)
        self.controller = controller
        self.warmup = int(warmup)
        self.exploration = float(exploration)
        self.exploration_decay = float(exploration_decay)
        self.audit_rate = float(audit_rate)
        self.max_importance = float(max_importance)
        self.source_weights = dict(source_weights)
        self.n_learned = 0

    @property
    def warming_up(self) -> bool:
        return self.n_learned < self.warmup

    @property
    def exploration_rate(self) -> float:
        """Probability that a would-be early answer is deferred anyway (decays to zero)."""
        steps = max(0, self.n_learned - self.warmup)
        return self.exploration * self.exploration_decay**steps

    def update(self, demos: Sequence[Demonstration],
               records: Mapping[str, AnswerRecord]) -> int:
        """Learn from ``demos``; returns how many were used. ``records`` holds, by event id, what
        the cascade kept of answering the demos' events (an event it has no record of, say one
        another worker answered, is recomputed)."""
        used = [(d, self.source_weights.get(d.source, 1.0)) for d in demos]
        used = [(d, w) for d, w in used if w > 0]
        if not used:
            return 0
        texts = [d.event.text for d, _ in used]
        labels = np.array([d.label for d, _ in used], dtype=np.int64)
        lengths = np.array([len(t) for t in texts], dtype=np.float64)
        n_stages = len(self.stages)
        recs = [records.get(d.event.id) for d, _ in used]
        from_llm = np.array([d.source in (SOURCE_LLM, SOURCE_AUDIT) for d, _ in used])
        truth = np.array([d.source == SOURCE_GROUND_TRUTH for d, _ in used])
        # The LLM's label for each demo: the demo's own, or (for ground truth) the one the LLM
        # gave when the cascade asked it; -1 when unknown.
        llm_label = np.array([
            int(d.label) if llm else (r.llm_label if r is not None and r.llm_label is not None
                                      else -1)
            for (d, _), llm, r in zip(used, from_llm, recs, strict=True)])
        # Each event teaches the policies once, whichever of its labels arrives first.
        imitate = (llm_label >= 0) & np.array([r is None or not r.imitated for r in recs])
        imitate &= from_llm | np.array([r is not None for r in recs])
        # ... and once within this batch too, where its LLM answer and its ground truth meet.
        seen: set[str] = set()
        for i, (demo, _) in enumerate(used):
            if imitate[i]:
                imitate[i] = demo.event.id not in seen
                seen.add(demo.event.id)
        audited = np.array([d.source == SOURCE_AUDIT or (r is not None and r.audited)
                            for (d, _), r in zip(used, recs, strict=True)])
        # Every label of an audited event stands for the rare early answers (its ground truth
        # too: the referee's evidence on sure answers comes from audits).
        boost = min(1.0 / max(self.audit_rate, 1e-9), self.max_importance)
        weights = np.where(audited, boost, 1.0) * np.array([w for _, w in used])
        said_at: list[np.ndarray] = []
        probas: list[np.ndarray] = []
        for j, (stage, policy, referee) in enumerate(
                zip(self.stages, self.policies, self.referees, strict=True)):
            proba = self._probas_of(j, stage, [d for d, _ in used], recs,
                                    probas[-1] if probas else None)
            probas.append(proba)
            extra = stage_extras(stage, texts)
            said = proba.argmax(axis=1)
            said_at.append(said)
            # The paper's expert: answer where the stage says what the LLM says, else defer.
            if imitate.any():
                policy.learn(proba[imitate], lengths[imitate], said[imitate] != llm_label[imitate],
                             weights[imitate], None if extra is None else extra[imitate])
            # The referee: where they disagree and the truth is known, who was right?
            judge = truth & (llm_label >= 0) & (said != llm_label)
            if judge.any():
                referee.learn(said[judge], said[judge] == labels[judge], weights[judge],
                              top=proba[judge].max(axis=1))
        for i, ((demo, _), record) in enumerate(zip(used, recs, strict=True)):
            if record is None:
                continue
            if imitate[i]:
                record.imitated = True
            if truth[i]:
                self.controller.observe_outcome(record.answer, int(labels[i]))
            # The LLM's label for an audited early answer: realised against predicted disagreement.
            if record.exit_stage < n_stages and from_llm[i] and demo.source == SOURCE_AUDIT:
                self.controller.observe_audit(
                    record.p_wrong_exit, bool(said_at[record.exit_stage][i] != llm_label[i]))
        # Each stage learns with its upstream's answers as they were given (before any learning).
        for j, stage in enumerate(self.stages):
            stage.learn(texts, labels.tolist(), probas[j - 1] if j else None)
        self.n_learned += len(used)
        return len(used)

    @staticmethod
    def _probas_of(j: int, stage: Stage, demos: Sequence[Demonstration],
                   records: Sequence[AnswerRecord | None],
                   upstream: np.ndarray | None) -> np.ndarray:
        """Stage ``j``'s probabilities for each demo: kept from answering (``records``, one per
        demo), else computed now (given ``upstream``, stage ``j - 1``'s for the same demos)."""
        out: list[np.ndarray | None] = []
        missing: list[int] = []
        for i, record in enumerate(records):
            proba = record.probas[j] if record is not None else None
            out.append(proba)
            if proba is None:
                missing.append(i)
        if missing:
            fresh = stage.predict_proba([demos[i].event.text for i in missing],
                                        None if upstream is None else upstream[missing])
            for row, i in enumerate(missing):
                out[i] = fresh[row]
        return np.vstack([p for p in out if p is not None])
