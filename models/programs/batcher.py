"""Gather the calls that the concurrent runs of a batch make to one backend into one batch.

Every event of a batch runs its program as a task of its own; a call to a backend waits in the
backend's batcher, which answers everything gathered during the current turn of the event loop
together: the runs that reach the same module at the same step share one stage prediction (one
encoder batch) or one LLM request list, though each is written as if it called alone.

>>> import asyncio
>>> seen = []
>>> def double(items):
...     seen.append(list(items))
...     return [2 * i for i in items]
>>> batcher = TickBatcher(double)
>>> async def main():
...     return await asyncio.gather(*(batcher.submit(i) for i in range(3)))
>>> asyncio.run(main()), seen
([0, 2, 4], [[0, 1, 2]])
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class TickBatcher(Generic[T, R]):
    """Answers items with ``flush(items) -> results`` (sync or async), one batch per loop turn.

    ``max_batch`` bounds a batch; a turn with more items flushes several.
    """

    def __init__(self, flush: Callable[[Sequence[T]], Sequence[R] | Awaitable[Sequence[R]]],
                 max_batch: int = 256) -> None:
        self._flush = flush
        self.max_batch = max(1, int(max_batch))
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []

    def submit(self, item: T) -> asyncio.Future[R]:
        """The future result of ``item``; the batch runs after the current turn's callbacks."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._items:
            # Scheduled behind the callbacks already queued (the other runs' next steps), so
            # that every run that reaches this backend in this turn joins the batch.
            loop.call_soon(self._run, loop)
        self._items.append(item)
        self._futures.append(future)
        return future

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        for lo in range(0, len(items), self.max_batch):
            part, waiting = items[lo:lo + self.max_batch], futures[lo:lo + self.max_batch]
            try:
                results = self._flush(part)
            except Exception as exc:
                _fail(waiting, exc)
                continue
            if inspect.isawaitable(results):
                loop.create_task(_settle_later(results, waiting))
            else:
                _settle(waiting, results)


async def _settle_later(results: Awaitable[Sequence[Any]],
                        futures: list[asyncio.Future[Any]]) -> None:
    try:
        done = await results
    except Exception as exc:
        _fail(futures, exc)
        return
    _settle(futures, done)


def _settle(futures: list[asyncio.Future[Any]], results: Sequence[Any]) -> None:
    if len(results) != len(futures):
        _fail(futures, RuntimeError(f"a backend gave {len(results)} answers for "
                                    f"{len(futures)} calls"))
        return
    for future, result in zip(futures, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
