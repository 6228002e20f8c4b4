"""Bounds on how fast feedback can move the model, and a watch for ground truth that looks forged.

The feedback topic is written by people and programs the operator does not control; two guards
stand between it and the learner.

:class:`LearningBudget` limits how many demonstrations any one source, and any one *key
pattern*, may teach per window of ``window`` demonstrations. A key pattern is the shape of the
event id, the record key its producer chose (:func:`key_pattern`: each run of letters and digits
becomes one character, so ``"2001"`` and ``"17"`` share the pattern ``"9"`` and ``"spam-0001"``
has ``"a-9"``): a producer that invents ids of its own shape is limited apart from the stream's
own ids (most streams' ids share one or a few patterns, numbers or UUIDs). The limit of a key in
a window is ``growth`` times the most it taught in any of the previous ``history`` windows, and
never below ``floor``: the usual mix never meets it, a source may quadruple its share from one
window to the next (by default), and a surge far above what a source or a pattern ever sent, or a
pattern never seen, is cut. What is over the limit is not learned (the caller counts it). With
the repeats dropped first (:mod:`.demo_dedup`), no source can teach more than once per answered
event anyway: the budget bounds how fast a source's share of the learning can grow.

:class:`ContradictionWatch` looks at each ground-truth demonstration before it is learned. It
*contradicts the model* when the cascade's stages give another label with probability at least
``confident`` and the LLM, where it answered the event, gave another label too (where the LLM
never saw the event, the stages' confident answer is the only opinion, and it stands). Some
ground truth contradicts the model on any stream (the LLM and the stages are wrong at times); a
rate far above the usual is what forged ground truth looks like. The watch is *alarmed* while,
among the last ``window`` ground-truth demonstrations, at least ``min_count`` contradict the
model and their share is at least ``floor_share`` and at least ``factor`` times the long-run
share (measured on the ground truth leaving the window while the watch is not alarmed, so that
an attack does not teach the watch that it is usual; before ``baseline_after`` of them, only
``floor_share`` applies, and the long-run share is learned, alarmed or not). A lasting change of
the usual share keeps the alarm on until a person looks. On alarm it logs a WARNING with the
evidence: the shares, a few contradicting examples with every opinion, and the key patterns they
came with. It does not stop anything by itself: the publish gate (:mod:`.publish_gate`) decides
whether what was learned is published.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamcascade.models.lru import LRUCache
from streamcascade.models.types import (
    SOURCE_AUDIT,
    SOURCE_GROUND_TRUTH,
    SOURCE_LLM,
    Demonstration,
    LabelSet,
)

__all__ = ["ContradictionWatch", "LearningBudget", "Opinion", "key_pattern"]

log = logging.getLogger(__name__)

_RUNS = re.compile(r"[A-Za-z0-9]+")


def key_pattern(event_id: str, max_chars: int = 32) -> str:
    """The shape of an event id: each run of ASCII letters and digits becomes ``9`` if it is all
    digits, else ``a``; other characters stay (the shape is cut to ``max_chars``).

    >>> key_pattern("2001"), key_pattern("user-17"), key_pattern("3f2a91bc-0042")
    ('9', 'a-9', 'a-9')
    """
    return _RUNS.sub(lambda m: "9" if m.group().isdigit() else "a", event_id)[:max_chars]


@dataclass(slots=True)
class _Tally:
    window: int  # the window index the count is for
    count: int
    past: deque[int]  # counts of the windows before, newest last


class LearningBudget:
    """How many demonstrations each source and each key pattern may teach per window.

    Windows are counted in demonstrations offered, not in seconds: a learner catching up on a
    backlog reads the usual mix of sources and patterns, only faster, and is not cut.

    Parameters
    ----------
    window
        Demonstrations per window.
    floor
        The least a key may teach per window, whatever its history.
    growth
        A key may teach up to this many times its busiest recent window.
    history
        How many past windows are remembered per key.
    max_keys
        How many keys (sources and patterns) are tracked; the least recently used are forgotten
        (a forgotten key starts again from ``floor``).

    Nothing is limited in the first window, in which the budget learns the stream's mix.
    """

    def __init__(self, window: int = 1000, floor: int = 50, growth: float = 4.0,
                 history: int = 5, max_keys: int = 1024) -> None:
        if window < 1 or floor < 1 or growth < 1 or history < 1:
            raise ValueError("window, floor, growth and history must be >= 1")
        self.window = int(window)
        self.floor = int(floor)
        self.growth = float(growth)
        self.history = int(history)
        self._offered = 0  # demonstrations offered in all
        self._tallies: LRUCache[str, _Tally] = LRUCache(max_keys)

    def _tally(self, key: str, window: int) -> _Tally:
        tally = self._tallies.get(key)
        if tally is None:
            tally = _Tally(window, 0, deque(maxlen=self.history))
            self._tallies.put(key, tally)
        elif tally.window != window:  # the windows since the last one, empty ones included
            for _ in range(min(window - tally.window, self.history)):
                tally.past.append(tally.count)
                tally.count = 0
            tally.window, tally.count = window, 0
        return tally

    def limit(self, key: str) -> int | None:
        """What ``key`` (``"source:<name>"`` or ``"pattern:<shape>"``) may teach in the current
        window, in all (None: no limit yet)."""
        return self._limit_of(self._tally(key, self._offered // self.window))

    def _limit_of(self, tally: _Tally) -> int | None:
        if tally.window == 0:  # the first window: the mix is not known yet
            return None
        return max(self.floor, math.floor(self.growth * max(tally.past, default=0)))

    def admit(self, demo: Demonstration) -> bool:
        """Whether ``demo`` may be learned now; if so, it is counted against its source and its
        key pattern."""
        window = self._offered // self.window
        self._offered += 1
        tallies = [self._tally(f"source:{demo.source}", window),
                   self._tally(f"pattern:{key_pattern(demo.event.id)}", window)]
        for tally in tallies:
            limit = self._limit_of(tally)
            if limit is not None and tally.count >= limit:
                return False
        for tally in tallies:
            tally.count += 1
        return True


@dataclass(frozen=True, slots=True)
class Opinion:
    """What the model said of an event before learning its ground truth."""

    #: The stages' label and its probability.
    stage_label: int
    stage_confidence: float


@dataclass(frozen=True, slots=True)
class _Evidence:
    event_id: str
    label: int
    llm_label: int | None
    opinion: Opinion


class ContradictionWatch:
    """Flags ground truth that contradicts the model at an unusual rate (see the module).

    Parameters
    ----------
    labels
        The task's labels (for the evidence in the warning).
    confident
        The stages' probability from which their answer counts as confident.
    window, min_count, floor_share, factor
        The alarm's rule (see the module).
    baseline_after
        Ground-truth demonstrations seen before the long-run share is trusted (until then only
        ``floor_share`` applies).
    remember_llm
        How many events' LLM labels are kept (they come with the LLM's own demonstrations).
    warn_every_s
        While the alarm holds, the WARNING is repeated with fresh evidence at most this often.
    clock
        Seconds; the tests pass a fake one.
    """

    def __init__(self, labels: LabelSet, *, confident: float = 0.9, window: int = 200,
                 min_count: int = 20, floor_share: float = 0.25, factor: float = 3.0,
                 baseline_after: int = 500, remember_llm: int = 100_000,
                 warn_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.labels = labels
        self.confident = confident
        self.window = window
        self.min_count = min_count
        self.floor_share = floor_share
        self.factor = factor
        self.baseline_after = baseline_after
        self.warn_every_s = warn_every_s
        self._clock = clock
        self._llm: LRUCache[str, int] = LRUCache(remember_llm)
        # The last `window` ground-truth verdicts: the key pattern of a contradiction, else None.
        self._recent: deque[str | None] = deque()
        self._recent_count = 0
        self._patterns: Counter[str] = Counter()  # the key patterns of those contradictions
        self._evidence: deque[_Evidence] = deque(maxlen=5)
        # The long-run share of contradictions, over the ground truth that left the window while
        # the watch was not alarmed (a burst is judged before it can count as usual), or before
        # the usual share was known.
        self._baseline_seen = 0
        self._baseline_hits = 0
        self.alarmed = False
        self._warned_at = float("-inf")
        #: Contradicting ground-truth demonstrations seen, and times the alarm rose, in all.
        self.contradictions = 0
        self.alarms = 0
        #: The highest share of contradictions in a full window so far (NaN before one).
        self.highest_share = float("nan")

    def note_llm(self, demos: Sequence[Demonstration]) -> None:
        """Remember the LLM's labels of these demonstrations (those of other sources are
        ignored)."""
        for demo in demos:
            if demo.source in (SOURCE_LLM, SOURCE_AUDIT):
                self._llm.put(demo.event.id, demo.label)

    def baseline_share(self) -> float:
        """The long-run share of ground truth that contradicts the model (NaN before any)."""
        if not self._baseline_seen:
            return float("nan")
        return self._baseline_hits / self._baseline_seen

    def window_share(self) -> float:
        """The share of the recent ground truth that contradicts the model (NaN before any)."""
        return self._recent_count / len(self._recent) if self._recent else float("nan")

    def contradicts(self, demo: Demonstration, opinion: Opinion) -> bool:
        """Whether ground-truth ``demo`` contradicts the model (the stages' ``opinion`` and the
        LLM's label, where known)."""
        if demo.label == opinion.stage_label or opinion.stage_confidence < self.confident:
            return False
        llm_label = self._llm.get(demo.event.id)
        return llm_label is None or llm_label != demo.label

    def observe(self, demos: Sequence[Demonstration], opinions: Sequence[Opinion]) -> int:
        """Judge the ground-truth demonstrations of a batch (``opinions``: the model's, one per
        demonstration, taken before it learns them); returns how many contradict the model.
        Other sources' demonstrations only teach the watch their LLM labels."""
        self.note_llm(demos)
        hits = 0
        was_alarmed = self.alarmed
        peak: tuple[float, int, int] | None = None  # the alarm's highest share in this batch
        for demo, opinion in zip(demos, opinions, strict=True):
            if demo.source != SOURCE_GROUND_TRUTH:
                continue
            pattern = None
            if self.contradicts(demo, opinion):
                hits += 1
                pattern = key_pattern(demo.event.id)
                self._evidence.append(_Evidence(demo.event.id, demo.label,
                                                self._llm.get(demo.event.id), opinion))
            self._push(pattern)
            share = self.window_share()
            if len(self._recent) == self.window:
                self.highest_share = (share if math.isnan(self.highest_share)
                                      else max(self.highest_share, share))
            alarmed = self._recent_count >= self.min_count and share >= self.threshold()
            self.alarms += alarmed and not self.alarmed
            if alarmed and (peak is None or share > peak[0]):
                peak = (share, self._recent_count, len(self._recent))
            self.alarmed = alarmed
        self.contradictions += hits
        self._tell(was_alarmed, peak)
        return hits

    def _push(self, pattern: str | None) -> None:
        if len(self._recent) == self.window:
            old = self._recent.popleft()
            if old is not None:
                self._recent_count -= 1
                self._patterns[old] -= 1
            if not self.alarmed or self._baseline_seen < self.baseline_after:
                self._baseline_seen += 1
                self._baseline_hits += old is not None
        self._recent.append(pattern)
        if pattern is not None:
            self._recent_count += 1
            self._patterns[pattern] += 1

    def threshold(self) -> float:
        """The window share from which the watch is alarmed (given ``min_count`` hits)."""
        if self._baseline_seen < self.baseline_after:
            return self.floor_share
        return max(self.floor_share, self.factor * self.baseline_share())

    def _tell(self, was_alarmed: bool, peak: tuple[float, int, int] | None) -> None:
        """The WARNING when the alarm rose in this batch (or holds, at most every
        ``warn_every_s``), with the figures of its peak; an INFO line when it ended."""
        now = self._clock()
        if peak is not None and (not was_alarmed or now - self._warned_at >= self.warn_every_s):
            self._warn(*peak)
            self._warned_at = now
        if was_alarmed and not self.alarmed:
            log.info("ground truth contradicts the model at its usual rate again (%.0f%% of the "
                     "last %d)", 100 * self.window_share(), len(self._recent))

    def _warn(self, share: float, count: int, seen: int) -> None:
        name = self.labels.name
        examples = "; ".join(
            f"id {e.event_id[:40]!r}: ground truth {name(e.label)!r}, LLM "
            f"{name(e.llm_label) if e.llm_label is not None else 'not asked'!s}, stages "
            f"{name(e.opinion.stage_label)!r} at {e.opinion.stage_confidence:.2f}"
            for e in self._evidence)
        patterns = ", ".join(f"{p!r} x{n}" for p, n in self._patterns.most_common(3) if n)
        baseline = self.baseline_share()
        usual = "not known yet" if math.isnan(baseline) else f"{100 * baseline:.1f}%"
        log.warning(
            "possible poisoning: %d of the last %d ground-truth labels (%.0f%%; usual %s, alarm "
            "from %.0f%%) contradict both the LLM and the stages answering at probability >= "
            "%.2f. Key patterns: %s. Latest: %s", count, seen,
            100 * share, usual, 100 * self.threshold(), self.confident, patterns, examples)
