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
from typing import Any


class OffsetOrderAcks:
    """Tracks a stream's records from when they are read, and acks each partition's records in
    offset order as they are marked done.

    ``ack`` is the stream's ack (``stream.ack``); records are Faust events (``event.message``
    has ``tp`` and ``offset``).
    """

    def __init__(self, ack: Callable[[Any], Awaitable[Any]]) -> None:
        self._ack = ack
        # Per partition, offset -> [record, done], in the order read (offsets rise within one).
        self._open: dict[Any, OrderedDict[int, list[Any]]] = {}
        # Partitions taken away by a rebalance (see :meth:`forget`).
        self._forgotten: set[Any] = set()

    @property
    def held(self) -> int:
        """Records read and not yet acked (in flight, waiting, or behind one that is)."""
        return sum(len(q) for q in self._open.values())

    def track(self, records: Iterable[Any]) -> None:
        """Records just read, in the order read; call before any of them is marked done."""
        for record in records:
            message = record.message
            self._open.setdefault(message.tp, OrderedDict())[message.offset] = [record, False]

    def forget(self, tps: Iterable[Any]) -> int:
        """Partitions a rebalance took from this worker: drop their records, un-acked, and
        return how many. Whoever owns a partition next reads them again from its last commit.
        Acking them later would hand Faust offsets of a partition it no longer owns, or owns
        again and has read again from an earlier offset (the gap above)."""
        dropped = 0
        for tp in tps:
            dropped += len(self._open.pop(tp, ()))
            self._forgotten.add(tp)
        return dropped

    async def done(self, records: Iterable[Any]) -> None:
        """Mark ``records`` done; ack every record now at the head of its partition and done.

        A record read before its partition was forgotten is ignored (it is read again): one
        that is not tracked, or whose offset is now tracked for the record read again."""
        touched = set()
        for record in records:
            message = record.message
            entry = self._open.get(message.tp, {}).get(message.offset)
            if entry is None:
                if message.tp not in self._forgotten:  # never tracked: nothing is before it
                    await self._ack(record)
                continue
            if entry[0] is not record:
                continue
            entry[1] = True
            touched.add(message.tp)
        for tp in touched:
            queue = self._open[tp]
            while queue:
                offset, (record, finished) = next(iter(queue.items()))
                if not finished:
                    break
                del queue[offset]
                await self._ack(record)
            if not queue:
                del self._open[tp]
