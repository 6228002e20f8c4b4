"""The decision log: recent events kept so that feedback, which carries only an id, finds its text.

Feedback may arrive before its event (a labelling team that is faster than the stream, or a
replay) or after it. Both sides wait in the log for at most ``ttl_s`` seconds and the log holds at
most ``max_events`` events and ``max_pending`` waiting feedback records, and at most
``max_bytes`` characters of event text and bytes of raw feedback together (events can be
large), so memory is bounded however the streams behave. An event that expires unlabelled is
simply forgotten (most events are never labelled); feedback that expires unmatched comes back
from :meth:`DecisionLog.expire` so that the operator can dead-letter it.

>>> from types import SimpleNamespace
>>> from streamcascade.models.types import Event
>>> from streamcascade.operators.codec import Feedback
>>> clock = SimpleNamespace(now=0.0)
>>> log = DecisionLog(ttl_s=10, clock=lambda: clock.now)
>>> log.add_feedback(Feedback("a", 1, "ground_truth"), b"{}", None) is None  # before its event
True
>>> [m.event.text for m in log.record(Event("a", "some text"), predicted=0, stage="lr")]
['some text']
>>> clock.now = 11.0
>>> log.add_feedback(Feedback("b", 0, "ground_truth"), b"{}", None) is None
True
>>> clock.now = 30.0
>>> [p.feedback.event_id for p in log.expire()]
['b']
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamcascade.models.types import Event
from streamcascade.operators.codec import Feedback
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.options import DEFAULTS

#: In a sliced :meth:`DecisionLog.expire`, events forgotten per feedback record returned (an
#: event leaves in a step; a feedback record becomes a dead letter to encode and write).
EVENTS_PER_FEEDBACK = 20


@dataclass(slots=True)
class LoggedEvent:
    """An event the operator answered, with what it answered and when."""

    event: Event
    predicted: int | None
    stage: str
    decided_at: float


@dataclass(slots=True)
class PendingFeedback:
    """Feedback whose event has not been seen yet, with what a dead letter needs."""

    feedback: Feedback
    raw: bytes
    position: SourcePosition | None
    arrived_at: float
    key: bytes | None = None
    #: Whatever the caller needs back when this feedback leaves the log (the Faust event to ack).
    token: Any = None
    #: Pushed out by capacity rather than expired.
    evicted: bool = False


@dataclass(slots=True)
class Match:
    """Feedback joined with its event: what the learner needs, and what quality metrics need."""

    event: Event
    feedback: Feedback
    predicted: int | None
    stage: str
    #: Seconds from the event's answer to the feedback's arrival (negative: feedback came first).
    lag_s: float
    #: The waiting feedback's token (see :class:`PendingFeedback`) when the feedback came first:
    #: the caller acks it once the pair is written.
    token: Any = None


class DecisionLog:
    """A bounded, time-limited join of events and their feedback by event id.

    Parameters
    ----------
    ttl_s
        How long an event waits for feedback, and feedback for its event.
    max_events, max_pending, max_bytes
        Capacity: counts, and characters of event text plus bytes of waiting feedback; the
        oldest entries leave first when one is reached.
    clock
        Seconds, monotonic; a parameter so that tests can move time.

    Events and waiting feedback are kept in arrival order, as queues rather than least recently
    used caches (a look-up does not make an entry newer): expiry and the capacity limits take
    the oldest first, and the byte count follows every entry that leaves.
    """

    def __init__(
        self,
        ttl_s: float = DEFAULTS.decision_ttl_s,
        max_events: int = DEFAULTS.decision_log_size,
        max_pending: int = DEFAULTS.decision_log_size,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if ttl_s <= 0 or max_events <= 0 or max_pending <= 0 or max_bytes <= 0:
            raise ValueError("ttl_s, max_events, max_pending and max_bytes must be positive")
        self.ttl_s = ttl_s
        self.max_events = max_events
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self._held = 0  # characters of logged texts plus bytes of waiting feedback
        self.clock = clock
        self._events: OrderedDict[str, LoggedEvent] = OrderedDict()
        self._pending: OrderedDict[tuple[str, int], PendingFeedback] = OrderedDict()
        # Per event id, the keys of its waiting feedback in arrival order (a dict as an ordered
        # set: one key leaves in O(1), however many wait for the same id).
        self._pending_by_id: dict[str, dict[tuple[str, int], None]] = {}
        self._evicted: list[PendingFeedback] = []
        self._serial = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def pending(self) -> int:
        """How many feedback records wait for their event."""
        return len(self._pending)

    def record(self, event: Event, predicted: int | None, stage: str) -> list[Match]:
        """Log an event (``predicted`` is ``None`` where it got no answer); return the feedback
        that was waiting for it, joined."""
        now = self.clock()
        old = self._events.pop(event.id, None)
        if old is not None:
            self._held -= len(old.event.text)
        self._events[event.id] = LoggedEvent(event, predicted, stage, now)
        self._held += len(event.text)
        keys = self._pending_by_id.pop(event.id, None)
        matches = []
        for key in keys or ():
            waiting = self._pending.pop(key)
            self._held -= len(waiting.raw)
            lag = waiting.arrived_at - now
            matches.append(Match(event, waiting.feedback, predicted, stage, lag, waiting.token))
        self._shrink()
        return matches

    def _shrink(self) -> None:
        """Within capacity again, the oldest entries leaving first: an event is forgotten (most
        events are never labelled), waiting feedback is handed to :meth:`expire`."""
        while len(self._events) > self.max_events:
            self._drop_event()
        while len(self._pending) > self.max_pending:
            self._drop_pending()
        while self._held > self.max_bytes and (self._events or self._pending):
            event = next(iter(self._events.values()), None)
            waiting = next(iter(self._pending.values()), None)
            if waiting is None or (event is not None and event.decided_at <= waiting.arrived_at):
                self._drop_event()
            else:
                self._drop_pending()

    def _drop_event(self) -> None:
        _, gone = self._events.popitem(last=False)
        self._held -= len(gone.event.text)

    def _drop_pending(self) -> None:
        key, oldest = self._pending.popitem(last=False)
        self._held -= len(oldest.raw)
        self._forget_pending(key)
        oldest.evicted = True
        self._evicted.append(oldest)

    def add_feedback(
        self,
        feedback: Feedback,
        raw: bytes,
        position: SourcePosition | None,
        key: bytes | None = None,
        token: Any = None,
    ) -> Match | None:
        """Join feedback with its logged event, or keep it waiting and return ``None``."""
        now = self.clock()
        logged = self._events.get(feedback.event_id)
        if logged is not None and now - logged.decided_at <= self.ttl_s:
            lag = now - logged.decided_at
            return Match(logged.event, feedback, logged.predicted, logged.stage, lag)
        self._serial += 1
        pkey = (feedback.event_id, self._serial)
        self._pending[pkey] = PendingFeedback(feedback, raw, position, now, key, token)
        self._pending_by_id.setdefault(feedback.event_id, {})[pkey] = None
        self._held += len(raw)
        self._shrink()
        return None

    def _forget_pending(self, key: tuple[str, int]) -> None:
        """Forget one waiting feedback's key in the index by event id (it left the log)."""
        event_id = key[0]
        keys = self._pending_by_id.get(event_id)
        if keys is None:
            return
        keys.pop(key, None)
        if not keys:
            del self._pending_by_id[event_id]

    def forget_feedback(self, positions: set[tuple[str, int]]) -> list[PendingFeedback]:
        """Drop, and return, the waiting feedback read from these ``(topic, partition)``
        positions (partitions a rebalance took away): their new owner reads it again, so it is
        neither matched nor dead-lettered here."""
        def gone(waiting: PendingFeedback) -> bool:
            position = waiting.position
            return position is not None and (position.topic, position.partition) in positions

        dropped = [w for w in self._evicted if gone(w)]
        self._evicted = [w for w in self._evicted if not gone(w)]
        for key, waiting in list(self._pending.items()):
            if gone(waiting):
                del self._pending[key]
                self._held -= len(waiting.raw)
                self._forget_pending(key)
                dropped.append(waiting)
        return dropped

    def expire(self, limit: int | None = None) -> list[PendingFeedback]:
        """Forget events older than the TTL; return feedback that waited longer than the TTL
        (or was pushed out by capacity): it will never be matched.

        With ``limit``, at most that many feedback records are returned and at most
        ``EVENTS_PER_FEEDBACK`` times as many events forgotten (each a cheap step); the rest
        wait for the next call (:attr:`expiry_due` says whether there is more), so that a caller
        on the event loop can do the work in slices and let events be answered between them."""
        horizon = self.clock() - self.ttl_s
        events_left = None if limit is None else limit * EVENTS_PER_FEEDBACK
        while self._events and (events_left is None or events_left > 0):
            first = next(iter(self._events.values()))
            if first.decided_at >= horizon:
                break
            self._events.popitem(last=False)
            self._held -= len(first.event.text)
            if events_left is not None:
                events_left -= 1
        if limit is None or len(self._evicted) <= limit:
            expired, self._evicted = self._evicted, []
        else:
            expired, self._evicted = self._evicted[:limit], self._evicted[limit:]
        while self._pending and (limit is None or len(expired) < limit):
            key, first_pending = next(iter(self._pending.items()))
            if first_pending.arrived_at >= horizon:
                break
            del self._pending[key]
            self._held -= len(first_pending.raw)
            self._forget_pending(key)
            expired.append(first_pending)
        return expired

    def expiry_due(self) -> bool:
        """Whether :meth:`expire` has something to do now."""
        horizon = self.clock() - self.ttl_s
        if self._evicted:
            return True
        event = next(iter(self._events.values()), None)
        waiting = next(iter(self._pending.values()), None)
        return ((event is not None and event.decided_at < horizon)
                or (waiting is not None and waiting.arrived_at < horizon))
