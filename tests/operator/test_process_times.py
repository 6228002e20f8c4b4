"""``process_times``: what the benchmark reads to tell a worker's CPU from a busy machine."""

from __future__ import annotations

import os
import sys

import pytest

from streamcascade.benchkit.stream_io import process_times


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
def test_cpu_time_of_this_process_grows_with_work() -> None:
    before = process_times(os.getpid())
    assert before is not None
    total = sum(i * i for i in range(2_000_000))  # some tens of ms on a core
    after = process_times(os.getpid())
    assert after is not None and total > 0
    assert after.cpu_s - before.cpu_s > 0.005
    assert after.runqueue_s >= before.runqueue_s >= 0


def test_a_process_that_does_not_exist_has_no_times() -> None:
    assert process_times(2**31 - 1) is None
