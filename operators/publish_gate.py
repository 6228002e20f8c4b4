"""The publish gate: a new model version is checked on held-back demonstrations before the fleet
gets it.

A share of the events (``share``, chosen by a hash of the event id, so that all the labels of an
event go the same way) is *held back*: their demonstrations are not learned at once but kept, up
to ``capacity`` of them, newest last; when a newer one pushes the oldest out, that one is released
and learned then. The held-back demonstrations are the test set of every candidate version,
never part of what it learned.

Each held-back demonstration gets the *reference* answer: what the published version says of it
(the learner's model is the published one right after a publication, a loaded state or a
roll-back, and whenever it has learned nothing since; :meth:`PublishGate.rebase` and
:meth:`PublishGate.fill` take the answers then). Before the next publication, the candidate (the
learner's model now) answers the same demonstrations (:meth:`PublishGate.judge`).

**Clearly worse**, per source of demonstration (ground truth, the LLM, audits), on the
held-back demonstrations that have a reference answer: let ``n`` be their number, ``worse`` the
number the reference answered right and the candidate wrong, ``better`` the reverse. The
candidate is clearly worse on that source when all of these hold:

- ``n >= min_sample`` and ``worse + better >= min_discordant``;
- the exact one-sided sign test (McNemar's) on the pairs that differ rejects "as good" at level
  ``alpha``: P(X >= worse) <= alpha for X ~ Binomial(worse + better, 1/2);
- the net loss ``(worse - better) / n`` is at least ``min_loss`` (a real difference, not only a
  significant one).

A candidate clearly worse on any source is not published (the learner rolls back to the
published version; see :mod:`.fleet_learner`). The sources are judged apart because forged
ground truth agrees with itself: a model poisoned by it may look better on held-back ground
truth of the same producer and is clearly worse against the LLM. With fewer held-back
demonstrations than ``min_sample`` nothing is judged, and the version is published.

>>> from streamcascade.models.types import Demonstration, Event
>>> gate = PublishGate(share=1.0, min_sample=4, min_discordant=4, alpha=0.1, min_loss=0.1)
>>> held = [Demonstration(Event(str(i), "t"), 1, "llm") for i in range(6)]
>>> gate.hold(held)
[]
>>> gate.rebase(lambda events: [Opinion(1, 0.9)] * len(events))  # the published version
>>> verdict = gate.judge(lambda events: [Opinion(0, 0.9)] * len(events))  # a candidate
>>> verdict.publish, verdict.comparisons[0].worse, verdict.comparisons[0].better
(False, 6, 0)
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamcascade.models.types import Demonstration, Event
from streamcascade.operators.poison_guard import Opinion

__all__ = ["Comparison", "GateVerdict", "Preview", "PublishGate", "sign_test_p"]

#: What a model says of events without asking the LLM: one :class:`Opinion` per event, and no
#: side effect on the model.
Preview = Callable[[Sequence[Event]], Sequence[Opinion]]


def sign_test_p(worse: int, better: int) -> float:
    """P(X >= worse) for X ~ Binomial(worse + better, 1/2): how likely a candidate as good as the
    reference loses at least ``worse`` of the pairs where the two differ (exact).

    >>> sign_test_p(10, 0) == 2 ** -10, sign_test_p(0, 5)
    (True, 1.0)
    """
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n


@dataclass(frozen=True, slots=True)
class Comparison:
    """The candidate against the reference on one source's held-back demonstrations."""

    source: str
    n: int
    worse: int
    better: int

    @property
    def loss(self) -> float:
        """The candidate's net loss of accuracy, as a share of ``n`` (NaN when ``n`` is 0)."""
        return (self.worse - self.better) / self.n if self.n else float("nan")

    @property
    def p_value(self) -> float:
        return sign_test_p(self.worse, self.better)

    def describe(self) -> str:
        return (f"{self.source}: {self.worse} worse, {self.better} better of {self.n} "
                f"(net {100 * self.loss:+.1f} points against, p={self.p_value:.2g})")


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """Whether to publish, why, and the comparisons it rests on."""

    publish: bool
    reason: str
    comparisons: tuple[Comparison, ...] = ()


@dataclass(slots=True)
class _Held:
    demo: Demonstration
    reference: int | None = None  # the published version's answer, once taken


class PublishGate:
    """Holds back a sample of demonstrations and judges each candidate version on it.

    Parameters
    ----------
    share
        The share of events whose demonstrations are held back (0 turns the gate off).
    capacity
        How many held-back demonstrations are kept; the oldest is released to learning when a
        new one comes.
    min_sample, min_discordant, alpha, min_loss
        What "clearly worse" takes (see the module).
    """

    def __init__(self, share: float = 0.1, capacity: int = 1000, *, min_sample: int = 30,
                 min_discordant: int = 10, alpha: float = 0.001,
                 min_loss: float = 0.03) -> None:
        if not 0 <= share <= 1 or capacity < 1:
            raise ValueError("share must be in [0, 1] and capacity >= 1")
        self.share = share
        self.capacity = int(capacity)
        self.min_sample = min_sample
        self.min_discordant = min_discordant
        self.alpha = alpha
        self.min_loss = min_loss
        self._held: deque[_Held] = deque()
        self._threshold = int(share * 2**64)

    def __len__(self) -> int:
        return len(self._held)

    def holds_back(self, event_id: str) -> bool:
        """Whether the demonstrations of ``event_id`` are held back (the same answer on every
        worker and every run)."""
        digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8)
        return int.from_bytes(digest.digest(), "little") < self._threshold

    def hold(self, demos: Sequence[Demonstration]) -> list[Demonstration]:
        """Keep the held-back ones of ``demos``; return those to learn now: the others, and any
        that older held-back ones were pushed out by (in that order)."""
        learn_now: list[Demonstration] = []
        released: list[Demonstration] = []
        for demo in demos:
            if not self.holds_back(demo.event.id):
                learn_now.append(demo)
                continue
            self._held.append(_Held(demo))
            if len(self._held) > self.capacity:
                released.append(self._held.popleft().demo)
        return learn_now + released

    def release_all(self) -> list[Demonstration]:
        """Hand back every held-back demonstration (to learn them when the gate stops)."""
        demos = [h.demo for h in self._held]
        self._held.clear()
        return demos

    def rebase(self, preview: Preview) -> None:
        """The learner's model is now the published version: take its answers as the reference
        of every held-back demonstration."""
        self._answer(preview, list(self._held))

    def fill(self, preview: Preview) -> None:
        """The learner's model is still the published version: answer the held-back
        demonstrations that have no reference answer yet."""
        self._answer(preview, [h for h in self._held if h.reference is None])

    @staticmethod
    def _answer(preview: Preview, held: list[_Held]) -> None:
        if not held:
            return
        opinions = preview([h.demo.event for h in held])
        for entry, opinion in zip(held, opinions, strict=True):
            entry.reference = opinion.stage_label

    def judge(self, preview: Preview) -> GateVerdict:
        """Whether the candidate (what ``preview`` answers with) may be published."""
        judged = [h for h in self._held if h.reference is not None]
        if not judged:
            return GateVerdict(True, "no held-back demonstration with a reference answer yet")
        opinions = preview([h.demo.event for h in judged])
        tallies: dict[str, list[int]] = {}
        for entry, opinion in zip(judged, opinions, strict=True):
            tally = tallies.setdefault(entry.demo.source, [0, 0, 0])
            reference_right = entry.reference == entry.demo.label
            candidate_right = opinion.stage_label == entry.demo.label
            tally[0] += 1
            tally[1] += reference_right and not candidate_right
            tally[2] += candidate_right and not reference_right
        comparisons = tuple(Comparison(source, *tally) for source, tally in sorted(tallies.items()))
        worse = [c for c in comparisons if self.clearly_worse(c)]
        if worse:
            return GateVerdict(False, "clearly worse than the published version on held-back "
                                      + "; ".join(c.describe() for c in worse), comparisons)
        if all(c.n < self.min_sample for c in comparisons):
            return GateVerdict(True, f"too few held-back demonstrations to judge (fewer than "
                                     f"{self.min_sample} of each source)", comparisons)
        return GateVerdict(True, "not clearly worse than the published version", comparisons)

    def clearly_worse(self, comparison: Comparison) -> bool:
        """The rule of the module, on one source."""
        return (comparison.n >= self.min_sample
                and comparison.worse + comparison.better >= self.min_discordant
                and comparison.loss >= self.min_loss
                and comparison.p_value <= self.alpha)
