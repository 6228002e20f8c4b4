"""Acks in offset order: a record is acked only once every earlier record of its partition is done.

Faust commits, per partition, the offset after the longest run of acked offsets that starts at
the last commit, and is meant to stop at the first gap. faust-streaming 0.15.3 misses two kinds
of gap (``Consumer._new_offset``): a gap of a single record right after the committed offset (it
tests ``min(acked) - committed > 1`` where the committed offset is already the next to read), and
any gap before the partition's first commit (or while it is 0). The operator makes such gaps on
purpose: batches are written in parallel, and feedback waits un-acked for its event. Committing
past a record still in flight would lose it in a crash. So the operator never hands Faust a gap:
it marks records done in any order, and this class acks them in offset order.

>>> import asyncio
>>> from types import SimpleNamespace as NS
>>> acked = []
>>> async def ack(event): acked.append(event.message.offset)
>>> records = [NS(message=NS(tp="t0", offset=o)) for o in (5, 6, 7)]
>>> acks = OffsetOrderAcks(ack)
>>> acks.track(records)
>>> asyncio.run(acks.done(records[1:]))  # 5 is still in flight: nothing is acked
>>> acked
[]
>>> asyncio.run(acks.done(records[:1]))
>>> acked
[5, 6, 7]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any


class Revocations:
    """Which records were read before a rebalance took their partition from this worker.

    A rebalance sends a partition back to its last commit, for its next owner to read again,
    this worker too if it keeps it. Records read before it are *stale*: this worker never acks
    them, wherever they are (tracked, in a batch being answered, or collected and handed to the
    agent after the revoke), since that could commit past a record nobody has done. The agents
    drop stale records they have not started on; a batch already being answered or learned
    finishes, and the next owner writes its answers again (at least once). Faust stamps every
    record with the consumer generation it was read in, and a group's generations go up.
    """

    def __init__(self) -> None:
        self._stale_through: dict[Any, int] = {}  # partition -> last generation it was revoked

    def revoke(self, tps: Iterable[Any], generation: int) -> None:
        """``tps`` were revoked while the consumer was in ``generation``."""
        for tp in tps:
            self._stale_through[tp] = max(generation, self._stale_through.get(tp, generation))

    def assigned(self, generation: int) -> None:
        """A new assignment in consumer ``generation``. A generation not above a partition's
        revoked one means the group started its count again (it was deleted while empty):
        forget those revocations, or that partition's records would all look stale for good."""
        for tp, through in list(self._stale_through.items()):
            if generation <= through:
                del self._stale_through[tp]

    def is_stale(self, record: Any) -> bool:
        message = record.message
        through = self._stale_through.get(message.tp)
        if through is None:
            return False
        generation = getattr(message, "generation_id", None)
        return generation is None or generation <= through

    def fresh(self, records: Iterable[Any]) -> list[Any]:
        """``records`` less the stale ones (their partition's next owner handles them)."""
        if not self._stale_through:  # no revoke yet: the per-batch path stays a list copy
            return list(records)
        return [r for r in records if not self.is_stale(r)]


@dataclass(slots=True)
class _Tracked:
    """A record read and not yet acked, and whether the operator is done with it."""

    record: Any
    done: bool = False


class OffsetOrderAcks:
    """Tracks a stream's records from when they are read, and acks each partition's records in
    offset order as they are marked done.

    ``ack`` is the stream's ack (``stream.ack``); records are Faust events (``event.message``
    has ``tp``, ``offset`` and ``generation_id``). Records that ``revocations`` finds stale are
    neither tracked nor acked.
    """

    def __init__(self, ack: Callable[[Any], Awaitable[Any]],
                 revocations: Revocations | None = None) -> None:
        self._ack = ack
        self.revocations = revocations or Revocations()
        # Per partition, offset -> its record, in the order read (offsets rise within one).
        self._open: dict[Any, OrderedDict[int, _Tracked]] = {}

    @property
    def held(self) -> int:
        """Records read and not yet acked (in flight, waiting, or behind one that is)."""
        return sum(len(q) for q in self._open.values())

    def track(self, records: Iterable[Any]) -> None:
        """Records just read, in the order read; call before any of them is marked done."""
        for record in self.revocations.fresh(records):
            message = record.message
            self._open.setdefault(message.tp, OrderedDict())[message.offset] = _Tracked(record)

    def forget(self, tps: Iterable[Any]) -> int:
        """Drop the tracked records of partitions just revoked (see :class:`Revocations`),
        un-acked; return how many."""
        return sum(len(self._open.pop(tp, ())) for tp in tps)

    async def done(self, records: Iterable[Any]) -> None:
        """Mark ``records`` done; ack every record now at the head of its partition and done.

        A stale record is ignored, and so is one whose offset is tracked for another record
        (read again)."""
        touched = set()
        for record in self.revocations.fresh(records):
            message = record.message
            entry = self._open.get(message.tp, {}).get(message.offset)
            if entry is None:  # never tracked: nothing is known to be before it
                await self._ack(record)
                continue
            if entry.record is not record:
                continue
            entry.done = True
            touched.add(message.tp)
        for tp in touched:
            queue = self._open[tp]
            while queue:
                offset, head = next(iter(queue.items()))
                if not head.done:
                    break
                del queue[offset]
                await self._ack(head.record)
            if not queue:
                del self._open[tp]
