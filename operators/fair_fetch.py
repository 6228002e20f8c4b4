"""Fair fetching: a flood on one topic must not hold up the records of the others.

A Faust worker reads all its topics (input, feedback, demonstrations) with one consumer, and
hands their records to the agents one at a time, in one loop, a fetched batch after another.
Two things let a burst on one topic stall the others:

- Faust asks aiokafka for every record it has buffered (``max_poll_records`` unset): a burst of
  10,000 feedback records is one batch, and an event fetched just after it waits until Faust has
  handed over all 10,000 (tens of microseconds each, seconds in all).
- aiokafka's ``Fetcher.fetched_records`` drains its buffered partitions in a fixed order and
  keeps a partition it did not empty at the front: with a limit per batch, the flooded
  partition fills every batch until it is empty, and the others wait just the same.

:func:`fair_fetch` bounds the batch (``max_poll_records``, unless the app sets its own) and makes
aiokafka's drain go round the partitions: a partition that still has records after a batch goes
to the back of the line. An event then waits for at most one batch of another topic's records.
The patch of aiokafka is process-wide (its own buffer, a private attribute: another aiokafka
without it is left alone).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["MAX_POLL_RECORDS", "fair_fetch", "to_the_back"]

#: Records handed over per fetched batch when the app does not say.
MAX_POLL_RECORDS = 100


def fair_fetch(app: Any, max_poll_records: int = MAX_POLL_RECORDS) -> None:
    """Bound the app's fetched batches and make aiokafka drain partitions in turn (see the
    module)."""
    with warnings.catch_warnings():  # (Faust warns on a setting changed after the app is made)
        warnings.simplefilter("ignore")
        if app.conf.broker_max_poll_records is None:
            app.conf.broker_max_poll_records = max_poll_records
    _rotate_drained_partitions()


def to_the_back(buffered: Any, drained: Any) -> None:
    """Move each drained partition that still has records buffered behind the others, so that
    the others go first in the next batch (``buffered``: aiokafka's ordered buffer)."""
    for tp in drained:
        if tp in buffered:
            buffered.move_to_end(tp)


def _rotate_drained_partitions() -> None:
    from aiokafka.consumer.fetcher import Fetcher

    drain = getattr(Fetcher, "fetched_records", None)
    if drain is None or getattr(drain, "_streamcascade", False):
        return

    async def fetched_records(self: Any, partitions: Any, timeout: float = 0,
                              max_records: int | None = None) -> Any:
        drained = await drain(self, partitions, timeout, max_records)
        buffered: Any = getattr(self, "_records", None)
        if max_records is not None and drained and hasattr(buffered, "move_to_end"):
            to_the_back(buffered, drained)
        return drained

    fetched_records._streamcascade = True  # type: ignore[attr-defined]
    Fetcher.fetched_records = fetched_records
