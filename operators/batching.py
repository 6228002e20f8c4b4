"""Micro-batches of a Faust stream, cut by size or by how long their first event has waited.

Faust's own ``stream.noack_take(n, within)`` waits ``within`` seconds *after the agent has
finished the previous batch*, and holds the stream while the agent works. Under load the wait of
an event then adds up: the batch before it being answered, a full ``within``, and its own batch
being answered. :func:`micro_batches` keeps reading while the agent answers a batch, and closes
the next batch as soon as it is full or its first event has waited ``max_wait_s``: unless the
agent falls behind, an event reaches the agent at most ``max_wait_s`` after it arrived, or as
soon as the agent has finished the batch before it. At a low rate batches stay small; when the
agent is busy they grow by themselves, up to ``max_size`` (then the stream is held: backpressure).

Acks are the caller's: nothing here acks an event (the operator acks only what it has written).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class _Collector:
    """The stream processor that fills the open batch; it holds the stream when that is full."""

    def __init__(self, stream: Any, max_size: int) -> None:
        self.stream = stream
        self.max_size = max_size
        self.loop = asyncio.get_running_loop()
        self.batch: list[Any] = []
        self.first_at = 0.0
        self.arrived = asyncio.Event()  # the open batch has an event
        self.full = asyncio.Event()  # the open batch has max_size events
        self._room: asyncio.Future[None] | None = None  # resolved when a full batch is taken

    def __call__(self, value: Any) -> Any:
        # Faust calls processors for every event, and awaits what they return if it is
        # awaitable: a plain return costs nothing, a future holds the stream (backpressure).
        if not self.batch:
            self.first_at = self.loop.time()
            self.arrived.set()
        self.batch.append(self.stream.current_event)
        if len(self.batch) < self.max_size:
            return value
        self.full.set()
        self._room = self.loop.create_future()
        return self._after_room(self._room, value)

    @staticmethod
    async def _after_room(room: asyncio.Future[None], value: Any) -> Any:
        await room
        return value

    def take(self) -> list[Any]:
        batch, self.batch = self.batch, []
        self.arrived.clear()
        self.full.clear()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._room = None
        return batch


async def micro_batches(stream: Any, max_size: int, max_wait_s: float) -> AsyncIterator[list[Any]]:
    """Yield lists of the stream's events (Faust events, not acked): at most ``max_size`` each,
    each closed at the latest ``max_wait_s`` seconds after its first event arrived."""
    collector = _Collector(stream, max_size)
    acks_were = stream.enable_acks
    stream.enable_acks = False  # the caller acks, once it has written what the events produced
    stream.add_processor(collector)
    # Read the stream in the background, as Faust's own take() does (this is its mechanism).
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not collector.batch:
                await stream.wait_for_stopped(collector.arrived)
                continue  # an event, or the stream stopped
            left = collector.first_at + max_wait_s - collector.loop.time()
            if left > 0 and not collector.full.is_set():
                await stream.wait_for_stopped(collector.full, timeout=left)
            batch = collector.take()
            if batch:
                yield batch
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(collector)
