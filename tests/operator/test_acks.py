"""Acks in offset order: Faust is never handed a gap it could commit past."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamcascade.operators.acks import OffsetOrderAcks


def records(tp: str, *offsets: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o)) for o in offsets]


async def test_a_record_waits_for_every_earlier_record_of_its_partition() -> None:
    acked: list[tuple[str, int]] = []

    async def ack(record: Any) -> None:
        acked.append((record.message.tp, record.message.offset))

    acks = OffsetOrderAcks(ack)
    a = records("a", 0, 1, 2, 3)
    b = records("b", 7, 8)
    acks.track([a[0], b[0], a[1], b[1], a[2], a[3]])
    # One record in flight at the head (the gap faust-streaming 0.15.3 commits past).
    await acks.done([a[1], a[2], a[3], b[1]])
    assert acked == []
    assert acks.held == 6
    await acks.done([b[0]])
    assert acked == [("b", 7), ("b", 8)]
    await acks.done([a[0]])
    assert acked[2:] == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    assert acks.held == 0
    # A record never tracked has nothing before it that this worker knows of.
    await acks.done(records("c", 4))
    assert acked[-1] == ("c", 4)


async def test_records_of_a_revoked_partition_are_left_for_their_next_owner() -> None:
    """After a rebalance the partition is read again from its last commit: what was read before
    is never acked, though it finishes later, and the records read again are acked as usual."""
    acked: list[tuple[str, int]] = []

    async def ack(record: Any) -> None:
        acked.append((record.message.tp, record.message.offset))

    acks = OffsetOrderAcks(ack)
    before, kept = records("a", 0, 1, 2), records("b", 0)
    acks.track(before + kept)
    await acks.done(before[1:])  # 0 is in flight, 1-2 wait behind it
    assert acks.forget({"a"}) == 3 and acks.held == 1
    again = records("a", 0, 1)  # the same partition back, read again from offset 0
    acks.track(again)
    await acks.done(before)  # the first reading finishes: not this worker's to ack any more
    assert acked == []
    await acks.done(again + kept)
    assert acked == [("a", 0), ("a", 1), ("b", 0)]
    # A partition never tracked has nothing before it; a forgotten one is never acked blindly.
    await acks.done(records("a", 9) + records("c", 4))
    assert acked[3:] == [("c", 4)]


async def test_a_batch_written_first_waits_for_the_batch_read_before_it() -> None:
    import asyncio

    from streamcascade.operators.install import PipelinedWriter
    from streamcascade.operators.operator import Outgoing

    loop = asyncio.get_running_loop()
    acked: list[int] = []
    deliveries: list[asyncio.Future[None]] = []

    async def ack(record: Any) -> None:
        acked.append(record.message.offset)

    async def send(record: Outgoing) -> asyncio.Future[None]:
        deliveries.append(loop.create_future())
        return deliveries[-1]

    joined: list[str] = []

    async def then() -> None:
        joined.append("feedback acked")

    writer = PipelinedWriter(SimpleNamespace(), OffsetOrderAcks(ack), send)  # type: ignore[arg-type]
    out = Outgoing("output", b"k", b"v")
    await writer.write_then_ack([out], records("in", 10))
    await writer.write_then_ack([out], records("in", 11, 12), then)
    deliveries[1].set_result(None)  # the second batch is written first
    await asyncio.sleep(0.01)
    assert acked == [] and joined == ["feedback acked"]
    deliveries[0].set_result(None)
    await asyncio.sleep(0.01)
    assert acked == [10, 11, 12]


async def test_an_agent_error_stops_the_worker_rather_than_restart_the_agent() -> None:
    """A restarted agent would track its stream afresh, and the failed run's held records would
    never be acked: the worker stops instead, and a new one reads them again."""
    from streamcascade.operators.install import run_or_crash

    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    async def failing() -> None:
        raise ConnectionError("a write failed")

    async def fine() -> None:
        return None

    app = SimpleNamespace(crash=crash)
    await run_or_crash(app, "feedback", fine)
    assert crashed == []
    await run_or_crash(app, "feedback", failing)
    assert len(crashed) == 1 and isinstance(crashed[0], ConnectionError)
