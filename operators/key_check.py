"""Records whose Kafka key is not their event id: counted, and warned about once per partition.

Feedback meets its event because both are keyed by the event id and the topics have as many
partitions: the same key lands on the same partition number, read by the same worker. A producer
that keys an event (or its feedback) by anything else breaks that: the feedback lands on another
partition, waits there for an event that never comes, and expires as a ``feedback_unmatched``
dead letter. The record itself is still used; what goes wrong comes later, so the operator says
so when it first sees such a record on a partition. A record without a key is not counted (a
producer that sends no keys spreads records on its own terms; on one partition nothing is lost).

>>> from streamcascade.operators.dead_letters import SourcePosition
>>> seen = []
>>> check = KeyMismatchCheck(seen.append)
>>> at = SourcePosition("events", 0, 1)
>>> check(b"7", "7", at), check(b"x", "7", at), check(None, "7", at)
(False, True, False)
>>> seen
['events']
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from streamcascade.operators.dead_letters import SourcePosition

__all__ = ["KeyMismatchCheck"]

log = logging.getLogger(__name__)


class KeyMismatchCheck:
    """Calls ``on_mismatch(topic)`` for each record keyed other than by its event id, and logs a
    WARNING the first time it happens on each partition."""

    def __init__(self, on_mismatch: Callable[[str], None]) -> None:
        self.on_mismatch = on_mismatch
        self._warned: set[tuple[str, int]] = set()  # (partitions are few: bounded in practice)

    def __call__(self, key: bytes | None, event_id: str, position: SourcePosition) -> bool:
        """Whether ``key`` is a key other than ``event_id``'s (counted, maybe warned)."""
        if key is None or key == event_id.encode("utf-8"):
            return False
        self.on_mismatch(position.topic)
        where = (position.topic, position.partition)
        if where not in self._warned:
            self._warned.add(where)
            log.warning(
                "a record of %s partition %d is keyed %r, not by its event id %r: feedback, keyed "
                "by id, may go to another partition and miss it (said once per partition; "
                "counted in streamcascade_record_key_mismatches_total)", position.topic,
                position.partition, key[:80], event_id[:80])
        return True
