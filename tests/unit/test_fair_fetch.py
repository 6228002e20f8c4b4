"""Fair fetching: batches are bounded and aiokafka's fetcher, patched, drains partitions in
turn."""

from __future__ import annotations

import collections
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.fetcher import Fetcher
from aiokafka.structs import TopicPartition

from streamcascade.operators.fair_fetch import MAX_POLL_RECORDS, fair_fetch, to_the_back


def _app(max_poll_records: int | None = None) -> Any:
    return SimpleNamespace(conf=SimpleNamespace(broker_max_poll_records=max_poll_records))


def test_the_batch_is_bounded_unless_the_app_says() -> None:
    app = _app()
    fair_fetch(app)
    assert app.conf.broker_max_poll_records == MAX_POLL_RECORDS
    own = _app(7)
    fair_fetch(own)
    assert own.conf.broker_max_poll_records == 7


def test_patching_twice_wraps_once() -> None:
    fair_fetch(_app())
    drain = Fetcher.fetched_records
    fair_fetch(_app())
    assert Fetcher.fetched_records is drain


def test_a_partition_left_with_records_goes_to_the_back_of_the_line() -> None:
    flood, events, other = (TopicPartition("feedback", 0), TopicPartition("input", 0),
                            TopicPartition("input", 1))
    # Both drained partitions have records left; the one not drained this time goes first.
    buffered = collections.OrderedDict([(flood, "left"), (other, "left"), (events, "new")])
    to_the_back(buffered, {flood: ["a batch"], other: ["a batch"]})
    assert list(buffered) == [events, flood, other]
    emptied = collections.OrderedDict([(events, "new")])
    to_the_back(emptied, {flood: ["its last records"]})  # drained to the end: nothing to move
    assert list(emptied) == [events]
