"""What stands between the demonstrations topic and the model: the learner's screen and gate.

:class:`LearningGuard` puts the pieces in the order the learner uses them. Each batch of
demonstrations is screened before anything is learned:

1. repeats are dropped (:class:`~.demo_dedup.DemonstrationDedup`: each event teaches once per
   source, first wins);
2. what is over a source's or a key pattern's budget for the window is dropped
   (:class:`~.poison_guard.LearningBudget`);
3. ground truth is compared with what the model says before learning it
   (:class:`~.poison_guard.ContradictionWatch`, which warns on an unusual rate);
4. a share of the events is held back as the test set of the next candidate version
   (:class:`~.publish_gate.PublishGate`).

Before a new version is published, :meth:`LearningGuard.check` judges it on the held-back
demonstrations against the published one. Steps 3 and 4 need a model that can say what it thinks
of an event without the LLM and without changing (:class:`Previewing`, which a
:class:`~streamcascade.models.cascade.Cascade` is); with another model they are skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from streamcascade.models.types import SOURCE_GROUND_TRUTH, Demonstration, Event, LabelSet
from streamcascade.operators.demo_dedup import DemonstrationDedup
from streamcascade.operators.poison_guard import ContradictionWatch, LearningBudget, Opinion
from streamcascade.operators.publish_gate import GateVerdict, Preview, PublishGate

__all__ = ["SEEN_META_KEY", "LearningGuard", "Previewing", "Screened", "preview_of"]

#: Where a published state's metadata carries the learner's seen-set.
SEEN_META_KEY = "seen_demonstrations"


@runtime_checkable
class Previewing(Protocol):
    """A model that can say, without the LLM and without changing, what it thinks of events:
    per event, a label and its probability."""

    def preview(self, events: Sequence[Event]) -> list[tuple[int, float]]: ...


def preview_of(model: object) -> Preview | None:
    """``model``'s preview as the guard's :data:`~.publish_gate.Preview`, if it has one."""
    if not isinstance(model, Previewing):
        return None
    say = model.preview

    def preview(events: Sequence[Event]) -> list[Opinion]:
        return [Opinion(label, confidence) for label, confidence in say(events)]

    return preview


@dataclass(slots=True)
class Screened:
    """A batch after the screen: what to learn now, and what was dropped, by reason."""

    learn: list[Demonstration] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    #: Ground-truth demonstrations that contradict the model (learned all the same).
    contradictions: int = 0
    #: Demonstrations of the batch held back by the publish gate (learned later).
    held: int = 0


class LearningGuard:
    """Screens demonstrations for the learner and judges its candidate versions.

    Parameters
    ----------
    labels
        The task's labels.
    preview
        The learner's model's preview (see :func:`preview_of`); None skips the watch and the gate.
    dedup, budget, watch, gate
        The pieces (defaults when None); ``gate=None`` with a model that previews makes a
        default gate, pass ``PublishGate(share=0)`` for none.
    """

    def __init__(self, labels: LabelSet, preview: Preview | None, *,
                 dedup: DemonstrationDedup | None = None, budget: LearningBudget | None = None,
                 watch: ContradictionWatch | None = None,
                 gate: PublishGate | None = None) -> None:
        self.preview = preview
        # (`is None`, not `or`: an empty dedup or gate has a length of 0, and is falsy)
        self.dedup = DemonstrationDedup() if dedup is None else dedup
        self.budget = LearningBudget() if budget is None else budget
        self.watch = ContradictionWatch(labels) if watch is None else watch
        self.gate = PublishGate(share=0.1 if preview is not None else 0.0) if gate is None else gate

    def screen(self, demos: Sequence[Demonstration]) -> Screened:
        """Steps 1 to 4 of the module on a batch."""
        result = Screened()
        seen = self.dedup.filter(demos)
        result.skipped.update(duplicate=seen.duplicates, conflicting=seen.conflicting)
        admitted = []
        for demo in seen.fresh:
            if self.budget.admit(demo):
                admitted.append(demo)
            else:
                result.skipped["rate_limited"] += 1
        if self.preview is None:
            result.learn = admitted
            return result
        truth = [d for d in admitted if d.source == SOURCE_GROUND_TRUTH]
        self.watch.note_llm(admitted)
        if truth:
            result.contradictions = self.watch.observe(truth, self.preview(
                [d.event for d in truth]))
        result.learn = self.gate.hold(admitted)
        result.held = sum(self.gate.holds_back(d.event.id) for d in admitted)
        return result

    @property
    def alarmed(self) -> bool:
        """Whether ground truth contradicts the model at an unusual rate now."""
        return self.watch.alarmed

    def check(self) -> GateVerdict:
        """Whether the learner's model may be published (always, without a preview)."""
        if self.preview is None:
            return GateVerdict(True, "the model has no preview: not judged")
        return self.gate.judge(self.preview)

    def is_reference(self) -> None:
        """The learner's model is now the published version (published, loaded or rolled
        back to): its answers become the reference of the held-back demonstrations."""
        if self.preview is not None:
            self.gate.rebase(self.preview)

    def still_reference(self) -> None:
        """The learner's model is still the published version: held-back demonstrations that
        came since get their reference answers now."""
        if self.preview is not None:
            self.gate.fill(self.preview)

    # -- the seen-set in a published state -----------------------------------------------------
    def save(self, meta: dict[str, Any]) -> None:
        """Add the seen-set to a state's ``meta``."""
        meta[SEEN_META_KEY] = self.dedup.save()

    def load(self, meta: dict[str, Any]) -> bool:
        """Take the seen-set of a loaded state's ``meta``; False where it has none (a state of
        an older version, or a bad one: the current seen-set is kept)."""
        text = meta.get(SEEN_META_KEY)
        if not isinstance(text, str):
            return False
        try:
            self.dedup.load(text)
        except ValueError:
            return False
        return True
