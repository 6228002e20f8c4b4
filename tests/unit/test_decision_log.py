"""The decision log: feedback joins its event whichever comes first, within bounds."""

from __future__ import annotations

import pytest

from streamcascade.models.types import Event
from streamcascade.operators.codec import Feedback
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.decision_log import DecisionLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fb(event_id: str, label: int = 1, source: str = "ground_truth") -> Feedback:
    return Feedback(event_id, label, source)


def test_feedback_after_its_event_joins_at_once() -> None:
    clock = Clock()
    log = DecisionLog(ttl_s=60, clock=clock)
    assert log.record(Event("a", "text a"), predicted=0, stage="hashed") == []
    clock.now = 5.0
    match = log.add_feedback(fb("a"), b"{}", None)
    assert match is not None
    got = (match.event.text, match.predicted, match.stage, match.lag_s)
    assert got == ("text a", 0, "hashed", 5)


def test_feedback_before_its_event_waits_then_joins() -> None:
    clock = Clock()
    log = DecisionLog(ttl_s=60, clock=clock)
    assert log.add_feedback(fb("b", 1), b"raw", SourcePosition("fb", 0, 3), token="ack-me") is None
    assert log.pending == 1
    clock.now = 2.0
    matches = log.record(Event("b", "text b"), predicted=1, stage="llm")
    assert [(m.feedback.label, m.lag_s) for m in matches] == [(1, -2.0)]
    assert log.pending == 0
    assert log.expire() == []


def test_two_sources_of_feedback_both_join() -> None:
    log = DecisionLog(ttl_s=60, clock=Clock())
    log.record(Event("c", "t"), predicted=0, stage="hashed")
    sources = [log.add_feedback(fb("c", 0, s), b"", None) for s in ("llm", "ground_truth")]
    assert [m.feedback.source for m in sources if m is not None] == ["llm", "ground_truth"]


def test_unmatched_feedback_expires_with_what_a_dead_letter_needs() -> None:
    clock = Clock()
    log = DecisionLog(ttl_s=10, clock=clock)
    position = SourcePosition("fb", 1, 99)
    log.add_feedback(fb("never"), b"original", position, key=b"never", token="tok")
    clock.now = 9.0
    assert log.expire() == []
    clock.now = 10.5
    [expired] = log.expire()
    assert (expired.raw, expired.position, expired.key, expired.token) == (
        b"original", position, b"never", "tok")
    # It is gone: the event arriving now finds nothing waiting.
    assert log.record(Event("never", "late"), 0, "hashed") == []


def test_events_older_than_the_ttl_no_longer_join() -> None:
    clock = Clock()
    log = DecisionLog(ttl_s=10, clock=clock)
    log.record(Event("old", "t"), 0, "hashed")
    clock.now = 11.0
    assert log.add_feedback(fb("old"), b"", None) is None  # waits for an event that is gone
    assert log.expire() == []  # the old event is forgotten; the feedback waits its own ttl
    assert len(log) == 0
    clock.now = 22.0
    assert [p.feedback.event_id for p in log.expire()] == ["old"]


def test_capacity_bounds_events_and_pending_feedback() -> None:
    log = DecisionLog(ttl_s=1e9, max_events=3, max_pending=2, clock=Clock())
    for i in range(5):
        log.record(Event(str(i), "t"), 0, "hashed")
    assert len(log) == 3
    assert log.add_feedback(fb("0"), b"", None) is None  # evicted, so it waits
    log.add_feedback(fb("x"), b"", None)
    log.add_feedback(fb("y"), b"", None)
    assert log.pending == 2
    # The oldest waiting feedback was pushed out and comes back for a dead letter that says so.
    assert [(p.feedback.event_id, p.evicted) for p in log.expire()] == [("0", True)]
    assert log.add_feedback(fb("4"), b"", None) is not None


def test_capacity_bounds_the_bytes_held_oldest_first() -> None:
    """Large events are bounded by size, not only by count: the oldest entry leaves first,
    whichever side it is on, and waiting feedback pushed out still comes back."""
    clock = Clock()
    log = DecisionLog(ttl_s=1e9, max_bytes=100, clock=clock)
    log.record(Event("a", "x" * 40), 0, "hashed")
    clock.now = 1.0
    log.add_feedback(fb("early"), b"y" * 40, None)
    clock.now = 2.0
    log.record(Event("b", "z" * 40), 0, "hashed")  # 120 held: the oldest, event a, leaves
    assert log.add_feedback(fb("a"), b"{}", None) is None and log.pending == 2
    clock.now = 3.0
    log.record(Event("c", "w" * 40), 0, "hashed")  # now the waiting feedback is the oldest
    assert [p.feedback.event_id for p in log.expire()] == ["early"]
    assert log.add_feedback(fb("b"), b"", None) is not None  # b and c are still logged
    assert log.add_feedback(fb("c"), b"", None) is not None


def test_feedback_of_revoked_partitions_leaves_without_a_dead_letter() -> None:
    clock = Clock()
    log = DecisionLog(ttl_s=10, max_pending=2, clock=clock)
    log.add_feedback(fb("a"), b"aa", SourcePosition("fb", 0, 1), token="a")
    log.add_feedback(fb("b"), b"bb", SourcePosition("fb", 1, 1), token="b")
    log.add_feedback(fb("c"), b"cc", SourcePosition("fb", 0, 2), token="c")  # pushes "a" out
    forgotten = log.forget_feedback({("fb", 0)})
    assert sorted(w.token for w in forgotten) == ["a", "c"]
    assert log.pending == 1
    # Neither matches nor expires here any more; the other partition's feedback still does.
    assert log.record(Event("c", "text c"), predicted=0, stage="hashed") == []
    clock.now = 20.0
    assert [w.token for w in log.expire()] == ["b"]
    log.add_feedback(fb("d"), b"dd", SourcePosition("fb", 0, 3))
    assert log.forget_feedback({("fb", 0)})[0].raw == b"dd"
    assert log.pending == 0


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        DecisionLog(ttl_s=0)
