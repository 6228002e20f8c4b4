"""Acks in offset order: Faust is never handed a gap it could commit past."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamcascade.operators.acks import OffsetOrderAcks, Revocations


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


def stamped(tp: str, generation: int, *offsets: int) -> list[Any]:
    """Records read in consumer ``generation`` (Faust stamps each record with it)."""
    return [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o, generation_id=generation))
            for o in offsets]


async def test_records_read_before_a_revoke_are_left_for_the_partitions_next_owner() -> None:
    """After a rebalance the partition is read again from its last commit. Records read before
    it are never acked here: tracked ones, ones of a batch still being answered, and ones
    collected but handed over only after the revoke; the records read again are acked as
    usual, in offset order."""
    acked: list[tuple[str, int]] = []

    async def ack(record: Any) -> None:
        acked.append((record.message.tp, record.message.offset))

    revocations = Revocations()
    acks = OffsetOrderAcks(ack, revocations)
    tracked, in_flight, collected = stamped("a", 1, 0), stamped("a", 1, 1), stamped("a", 1, 2, 3)
    kept = stamped("b", 1, 0)
    acks.track(tracked + kept)
    revocations.revoke({"a"}, generation=1)
    assert acks.forget({"a"}) == 1 and acks.held == 1
    acks.track(collected)  # handed over after the revoke: not tracked
    assert acks.held == 1 and revocations.fresh(collected + kept) == kept
    again = stamped("a", 2, 0, 1, 2, 3)  # the partition back in generation 2, from offset 0
    acks.track(again)
    await acks.done(in_flight + collected + tracked)  # the first reading finishes: ignored
    assert acked == []
    await acks.done(again[1:])
    assert acked == []  # 0 of the new reading is not done yet
    await acks.done(again[:1] + kept)
    assert sorted(acked) == [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0)]
    assert [o for tp, o in acked if tp == "a"] == [0, 1, 2, 3]
    # A record never tracked has nothing before it, unless it was read before a revoke.
    await acks.done(stamped("a", 1, 9) + stamped("c", 1, 4))
    assert acked[5:] == [("c", 4)]


def test_a_group_that_counts_its_generations_again_is_not_all_stale() -> None:
    revocations = Revocations()
    revocations.revoke({"a", "b"}, generation=7)
    revocations.assigned(generation=8)
    assert revocations.is_stale(stamped("a", 7, 0)[0])
    assert not revocations.is_stale(stamped("a", 8, 0)[0])
    revocations.revoke({"a"}, generation=8)
    # The group was deleted while empty and starts again at generation 1.
    revocations.assigned(generation=1)
    assert revocations.fresh(stamped("a", 1, 0) + stamped("b", 1, 0)) != []
    assert not revocations.is_stale(stamped("a", 1, 5)[0])
    assert not revocations.is_stale(stamped("b", 1, 5)[0])


async def test_a_batch_written_first_waits_for_the_batch_read_before_it() -> None:
    import asyncio

    from streamcascade.operators.operator import Outgoing
    from streamcascade.operators.writer import PipelinedWriter

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
    from streamcascade.operators.faust_io import run_or_crash

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
