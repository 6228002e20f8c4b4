"""Writing what the operator produced, and acking its input only once the broker has it all.

:class:`TopicSender` hands a record to the app's producer; :func:`write_all` writes a few and
waits for them; :class:`PipelinedWriter` writes the batches of the operator agent, overlapping
each batch's writes with answering the next, and acks input records in offset order once
everything written for them is acknowledged (at least once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from streamcascade.operators.acks import OffsetOrderAcks
from streamcascade.operators.operator import Outgoing
from streamcascade.operators.options import DEFAULTS

log = logging.getLogger(__name__)

#: Hands a record to the producer; what it returns is awaited once the broker has the record.
Sender = Callable[[Outgoing], Awaitable[Awaitable[Any]]]


class TopicSender:
    """A :data:`Sender` that writes each record to the topic of its role (``Outgoing.topic``:
    ``"output"``, ``"feedback"``, ``"dlq"``, ``"demonstrations"``), named in ``topics``.

    It hands records straight to the app's producer: Faust's own ``topic.send`` adds a layer of
    per-message objects the hot path does not need. Faust still flushes this producer before it
    commits offsets. A record for a role with no topic is logged as an error and dropped, never
    silently.
    """

    def __init__(self, app: Any, topics: Mapping[str, str]) -> None:
        self.app = app
        self.topics = dict(topics)

    async def __call__(self, record: Outgoing) -> Awaitable[Any]:
        topic = self.topics.get(record.topic)
        if topic is None:
            log.error("no %s topic configured; dropping a record: %s", record.topic,
                      record.value[:200].decode("utf-8", "replace"))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        delivery: Awaitable[Any] = await self.app.producer.send(
            topic, record.key, record.value, record.partition, None, None
        )
        return delivery


async def write_all(send: Sender, outgoing: Sequence[Outgoing]) -> None:
    """Hand every record to the producer, then wait until the broker has acknowledged each."""
    deliveries = [await send(record) for record in outgoing]
    if deliveries:
        await asyncio.gather(*deliveries)


class PipelinedWriter:
    """Writes a batch's records, and acks its input records once the broker has them all.

    Batches are pipelined: while the broker acknowledges one batch, the agent answers the next.
    A batch's early answers are written while the LLM answers the rest of it
    (:meth:`write_early`).
    A batch's records are done only when every output and dead letter of it is written, and
    acked in offset order (:mod:`.acks`), so a batch that completes early waits for the ones
    before it. At most ``max_in_flight`` batches wait; a failed write crashes the app, leaving
    its records un-acked, to be read again.
    """

    def __init__(self, app: Any, acks: OffsetOrderAcks, send: Sender,
                 max_in_flight: int = DEFAULTS.max_in_flight_batches) -> None:
        self.app = app
        self.acks = acks
        self.send = send
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: set[asyncio.Future[None]] = set()  # referenced until done
        self._early: list[asyncio.Future[Any]] = []  # of the batch being answered

    def write_early(self, outgoing: Sequence[Outgoing]) -> None:
        """Start writing records of the batch being answered now (its early answers); the
        batch's :meth:`write_then_ack` waits for them too before it acks."""
        if outgoing:  # one task for them all: a task per record costs the loop more than a send
            self._early.append(asyncio.ensure_future(self._deliver(list(outgoing))))

    async def _deliver(self, records: list[Outgoing]) -> Any:
        return await asyncio.gather(*[await self.send(r) for r in records])

    async def write_then_ack(self, outgoing: Sequence[Outgoing], events: Sequence[Any],
                             then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write the batch's records, then ack ``events`` and run ``then`` (in the background)."""
        self.acks.track(events)  # batches come in the order read
        await self._slots.acquire()
        deliveries: list[Awaitable[Any]] = list(self._early)
        self._early = []
        deliveries += [await self.send(record) for record in outgoing]
        task = asyncio.ensure_future(self._ack_when_written(deliveries, list(events), then))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _ack_when_written(self, deliveries: list[Awaitable[Any]], events: list[Any],
                                then: Callable[[], Awaitable[None]] | None) -> None:
        try:
            if deliveries:
                await asyncio.gather(*deliveries)
        except Exception as exc:
            log.error("writing a batch failed; its records stay un-acked: %s", exc)
            await self.app.crash(exc)
            return
        finally:
            self._slots.release()
        await self.acks.done(events)
        if then is not None:
            await then()
