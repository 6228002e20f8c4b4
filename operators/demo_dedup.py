"""Each event teaches once per source: repeated demonstrations are dropped before learning.

A demonstration is keyed by ``(event id, source)``. The rule is **first wins**: the first
demonstration of a key is learned; every later one with the same key is dropped, whatever its
label. A repeat with the same label is a ``duplicate`` (a producer's retry, a replayed topic);
one with another label is a ``conflicting`` one (ground truth that changed its mind, or someone
trying to outvote it): neither is learned, both are counted, so a flood of one id moves the
model once at most.

Memory is bounded: the keys of the last ``capacity`` distinct demonstrations are kept (a repeat
refreshes its key, so a flood keeps its own key remembered), each as a 64-bit digest of the key
and the first label, 9 bytes when saved whatever the id's length. A key forgotten because
``capacity`` newer keys came since is learned again if it comes back.

Restarts: :meth:`DemonstrationDedup.save` writes the remembered keys as text that travels in the
published model state's metadata, so that the seen-set always matches the state it is published
with. A learner that takes over (after a ``kill -9`` too) loads the newest state and its seen-set,
then reads the demonstrations topic from the last committed offset: records that the state
already includes (read again because the commit came after the publication) are recognised and
dropped, the others were never learned and are learned now.

>>> dedup = DemonstrationDedup(capacity=100)
>>> dedup.check("2001", "ground_truth", 0), dedup.check("2001", "ground_truth", 0)
('new', 'duplicate')
>>> dedup.check("2001", "ground_truth", 1), dedup.check("2001", "llm", 1)
('conflicting', 'new')
>>> again = DemonstrationDedup(capacity=100)
>>> again.load(dedup.save())
>>> again.check("2001", "ground_truth", 1)  # (first labels are not saved)
'duplicate'
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

import numpy as np

from streamcascade.models.lru import LRUCache
from streamcascade.models.types import Demonstration

__all__ = ["CONFLICTING", "DUPLICATE", "NEW", "DedupResult", "DemonstrationDedup"]

#: What :meth:`DemonstrationDedup.check` says of a demonstration.
NEW = "new"
DUPLICATE = "duplicate"
CONFLICTING = "conflicting"

#: Keys remembered by default: 8 bytes each when saved (about 1 MB of base64 at this size), and
#: about 100 bytes each in memory.
DEFAULT_CAPACITY = 100_000
_UNKNOWN = -1  # the first label of a key loaded from a saved set


def _digest(event_id: str, source: str) -> int:
    # A digest rather than the id: ids may be up to 1 KiB, and the saved set must stay small.
    # (Two keys of 100,000 share a 64-bit digest with odds of about 3e-10.)
    raw = hashlib.blake2b(f"{source}\x00{event_id}".encode("utf-8", "surrogatepass"),
                          digest_size=8).digest()
    return int.from_bytes(raw, "little")


class DedupResult:
    """The demonstrations of a batch that are new, and counts of those dropped."""

    __slots__ = ("conflicting", "duplicates", "fresh")

    def __init__(self) -> None:
        self.fresh: list[Demonstration] = []
        self.duplicates = 0
        self.conflicting = 0


class DemonstrationDedup:
    """Remembers which ``(event id, source)`` keys were learned, and with which label.

    Parameters
    ----------
    capacity
        How many keys are remembered (the least recently seen are forgotten first).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._seen: LRUCache[int, int] = LRUCache(self.capacity)

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, event_id: str, source: str, label: int) -> str:
        """:data:`NEW` (and now remembered), :data:`DUPLICATE` or :data:`CONFLICTING`."""
        key = _digest(event_id, source)
        first = self._seen.get(key)  # (a read refreshes the key)
        if first is None:
            self._seen.put(key, int(label))
            return NEW
        return CONFLICTING if first not in (_UNKNOWN, int(label)) else DUPLICATE

    def filter(self, demos: Sequence[Demonstration]) -> DedupResult:
        """The demonstrations of ``demos`` seen for the first time, in order (a repeat inside
        the batch counts as one too)."""
        result = DedupResult()
        for demo in demos:
            verdict = self.check(demo.event.id, demo.source, demo.label)
            if verdict == NEW:
                result.fresh.append(demo)
            elif verdict == DUPLICATE:
                result.duplicates += 1
            else:
                result.conflicting += 1
        return result

    def clear(self) -> None:
        """Forget every key."""
        self._seen.clear()

    def forget(self, event_id: str, source: str) -> None:
        """Forget one key (a demonstration that was remembered but will not be learned)."""
        self._seen.pop(_digest(event_id, source))

    def save(self) -> str:
        """The remembered keys, oldest first, as compact text (for a state's metadata). Only
        the keys are saved, not their first labels: after :meth:`load` a repeat is dropped all
        the same, and counted as a duplicate."""
        keys = np.fromiter(self._seen.keys(), dtype="<u8", count=len(self._seen))
        return base64.b64encode(keys.tobytes()).decode("ascii")  # (digests do not compress)

    def load(self, text: str) -> None:
        """Replace the remembered keys with those of :meth:`save` (the newest ``capacity``);
        a :class:`ValueError` if ``text`` is not such a set."""
        try:
            packed = base64.b64decode(text.encode("ascii"), validate=True)
        except ValueError as exc:
            raise ValueError(f"not a saved seen-set: {exc}") from None
        if len(packed) % 8:
            raise ValueError("not a saved seen-set: truncated")
        self._seen.clear()
        for key in np.frombuffer(packed, dtype="<u8")[-self.capacity:].tolist():
            self._seen.put(key, _UNKNOWN)
