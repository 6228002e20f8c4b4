"""Each event teaches once per source: first wins, repeats are counted, memory is bounded."""

from __future__ import annotations

import pytest

from streamcascade.models.types import Demonstration, Event
from streamcascade.operators.demo_dedup import (
    CONFLICTING,
    DUPLICATE,
    NEW,
    DemonstrationDedup,
)


def demo(event_id: str, label: int, source: str = "ground_truth") -> Demonstration:
    return Demonstration(Event(event_id, f"text of {event_id}"), label, source)


def test_a_flood_of_one_id_teaches_once() -> None:
    dedup = DemonstrationDedup(capacity=1000)
    batch = [demo("2000", 0), demo("2001", 0)] + [demo("2001", 1)] * 10_000 + [demo("2001", 0)]
    result = dedup.filter(batch)
    assert [d.event.id for d in result.fresh] == ["2000", "2001"]
    assert result.fresh[1].label == 0  # the first label wins
    assert result.conflicting == 10_000
    assert result.duplicates == 1


def test_the_key_is_the_id_and_the_source() -> None:
    dedup = DemonstrationDedup(capacity=10)
    assert dedup.check("7", "llm", 1) == NEW
    assert dedup.check("7", "ground_truth", 0) == NEW  # another source teaches once too
    assert dedup.check("7", "audit", 1) == NEW
    assert dedup.check("7", "llm", 1) == DUPLICATE
    assert dedup.check("7", "ground_truth", 1) == CONFLICTING
    # No confusion of a separator inside an id with the source.
    assert dedup.check("7\x00llm", "x", 1) == NEW


def test_memory_is_bounded_and_a_flood_keeps_its_key() -> None:
    dedup = DemonstrationDedup(capacity=3)
    dedup.check("flood", "ground_truth", 1)
    for i in range(50):
        dedup.check(str(i), "ground_truth", 0)
        assert dedup.check("flood", "ground_truth", 1) == DUPLICATE  # refreshed each time
    assert len(dedup) == 3
    assert dedup.check("0", "ground_truth", 0) == NEW  # forgotten long ago: learned again


def test_the_seen_set_survives_a_save_and_a_load() -> None:
    dedup = DemonstrationDedup(capacity=100)
    for i in range(150):
        dedup.check(str(i), "ground_truth", i % 2)
    restored = DemonstrationDedup(capacity=100)
    restored.load(dedup.save())
    assert len(restored) == 100
    assert restored.check("149", "ground_truth", 0) == DUPLICATE  # saved: dropped
    assert restored.check("10", "ground_truth", 0) == NEW  # beyond capacity: not saved
    smaller = DemonstrationDedup(capacity=5)
    smaller.load(dedup.save())  # the newest keys that fit
    assert smaller.check("149", "ground_truth", 1) == DUPLICATE
    assert smaller.check("140", "ground_truth", 1) == NEW


def test_a_forgotten_key_is_new_again() -> None:
    dedup = DemonstrationDedup(capacity=10)
    dedup.check("a", "llm", 0)
    dedup.forget("a", "llm")
    assert dedup.check("a", "llm", 1) == NEW


@pytest.mark.parametrize("text", ["not base64!", "QUJD"])  # (3 bytes: not whole digests)
def test_a_bad_saved_set_is_refused_and_changes_nothing(text: str) -> None:
    dedup = DemonstrationDedup(capacity=10)
    dedup.check("a", "llm", 0)
    with pytest.raises(ValueError, match="not a saved seen-set"):
        dedup.load(text)
    assert dedup.check("a", "llm", 0) == DUPLICATE


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DemonstrationDedup(capacity=0)
