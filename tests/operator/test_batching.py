"""Micro-batches of a Faust stream: cut by size, or by the wait of their first event.

The agent runs in Faust's ``test_context`` (an in-memory channel, no broker), so what is
measured here is the batching alone. Times are asserted with slack for a busy machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust

from streamcascade.operators.batching import micro_batches

MAX_WAIT = 0.3


Batches = list[tuple[float, list[Any]]]


def batching_app(name: str, max_size: int, work_s: float) -> tuple[Any, Batches]:
    """An app whose agent records each batch (when it got it, the values) and then works
    ``work_s`` seconds on it."""
    app = faust.App(name, broker="kafka://127.0.0.1:1", web_enabled=False)
    got: Batches = []

    async def agent(stream: Any) -> None:
        async for batch in micro_batches(stream, max_size, MAX_WAIT):
            got.append((time.monotonic(), [event.value for event in batch]))
            await asyncio.sleep(work_s)

    return app.agent(name=f"{name}-agent")(agent), got


async def test_a_full_batch_goes_at_once_and_a_lone_event_waits_at_most_max_wait() -> None:
    agent, got = batching_app("batching-size", max_size=3, work_s=0.0)
    async with agent.test_context() as context:
        start = time.monotonic()
        for value in range(3):
            await context.put(value)
        await asyncio.sleep(0.05)
        assert [values for _, values in got] == [[0, 1, 2]]
        assert got[0][0] - start < MAX_WAIT  # full: not held until the deadline
        lone_at = time.monotonic()
        await context.put(3)
        while len(got) < 2 and time.monotonic() - lone_at < 5:
            await asyncio.sleep(0.01)
        assert got[1][1] == [3]
        waited = got[1][0] - lone_at
        assert MAX_WAIT * 0.9 <= waited < MAX_WAIT + 1.0


async def test_events_read_while_the_agent_works_are_not_held_for_another_wait() -> None:
    work = 1.0
    agent, got = batching_app("batching-busy", max_size=100, work_s=work)
    async with agent.test_context() as context:
        await context.put("first")
        while not got:
            await asyncio.sleep(0.01)
        # The agent now works for a second; these arrive meanwhile and wait longer than
        # MAX_WAIT, so their batch must go as soon as the agent is free, not MAX_WAIT later.
        for value in range(5):
            await context.put(value)
        while len(got) < 2:
            await asyncio.sleep(0.01)
        assert got[1][1] == [0, 1, 2, 3, 4]
        free_at = got[0][0] + work
        assert got[1][0] - free_at < MAX_WAIT / 2
