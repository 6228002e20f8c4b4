"""The operator's contact with a Faust app: topics of raw bytes, records from Faust events, the
brokers' address, rebalances, and agents that stop the worker on an error they do not handle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streamcascade.operators.acks import Revocations
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.operator import InRecord

log = logging.getLogger(__name__)


def bootstrap_of(app: Any) -> str:
    """``host:port[,host:port]`` of the app's brokers (its ``broker`` setting is URLs)."""
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


def raw_topic(app: Any, name: str, **kwargs: Any) -> Any:
    """A Faust topic whose keys and values are bytes, untouched (the codec reads them)."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        **kwargs,
    )


def record_of(event: Any) -> InRecord:
    """A Faust event as the operator's :class:`InRecord` (the event is its ack handle)."""
    message = event.message
    return InRecord(
        key=message.key,
        value=message.value,
        position=SourcePosition(message.topic, message.partition, message.offset),
        received_at=message.time_in if message.time_in is not None else time.monotonic(),
        handle=event,
    )


def follow_revocations(app: Any, revocations: Revocations,
                       on_revoke: Callable[[set[Any]], object]) -> None:
    """Keep ``revocations`` in step with the app's rebalances (see :class:`Revocations`);
    ``on_revoke`` drops what the worker holds of the partitions just revoked."""
    async def revoked(_sender: Any, tps: set[Any], **_kwargs: Any) -> None:
        revocations.revoke(tps, int(app.consumer_generation_id))
        on_revoke(tps)

    async def assigned(_sender: Any, _tps: set[Any], **_kwargs: Any) -> None:
        revocations.assigned(int(app.consumer_generation_id))

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)


async def run_or_crash(app: Any, name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run an agent's loop; an error the loop does not handle stops the worker.

    Faust would restart the agent on the same stream with a fresh
    :class:`~streamcascade.operators.acks.OffsetOrderAcks`: the records the failed run holds would
    never be acked, and the new run's acks would reach Faust around them (the gap it can commit
    past). A restarted worker reads them all again."""
    try:
        await loop()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("the %s agent failed; stopping the worker (its records are read again)",
                      name)
        await app.crash(exc)
