"""Repeated log records are dropped, then summarised; others pass untouched."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from streamcascade.operators.log_throttle import RepeatedLogThrottle, throttle_repeated_logs


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def family() -> Iterator[tuple[str, Capture]]:
    """A fresh logger family whose records end in a capturing handler (and nowhere else)."""
    name = f"throttle-test-{uuid.uuid4().hex[:8]}"
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    capture = Capture()
    logger.addHandler(capture)
    yield name, capture
    logger.removeHandler(capture)


def test_repeats_within_the_window_pass_once_then_as_one_summary(
    family: tuple[str, Capture],
) -> None:
    name, capture = family
    clock = FakeClock()
    throttle = throttle_repeated_logs(logger_names=(name,), every_s=5.0, clock=clock)
    log = logging.getLogger(name)
    for i in range(813):
        clock.now += 0.001
        log.warning("unable to connect to node %d", i % 3)
    assert capture.lines == ["unable to connect to node 0"]
    clock.now += 5.0
    log.warning("unable to connect to node %d", 1)
    assert capture.lines[1] == "unable to connect to node 1 (repeated 812 times in the last 6 s)"
    log.warning("unable to connect to node %d", 2)  # a new window has begun
    assert len(capture.lines) == 2
    throttle.remove()


def test_one_dropped_record_reads_once(family: tuple[str, Capture]) -> None:
    name, capture = family
    clock = FakeClock()
    throttle = throttle_repeated_logs(logger_names=(name,), every_s=5.0, clock=clock)
    log = logging.getLogger(name)
    log.error("lost the broker")
    log.error("lost the broker")
    clock.now += 5.0
    log.error("lost the broker")
    clock.now += 5.0
    log.error("lost the broker")  # nothing was dropped since the last line: no note
    assert capture.lines == [
        "lost the broker",
        "lost the broker (repeated once in the last 5 s)",
        "lost the broker",
    ]
    throttle.remove()


def test_templates_and_loggers_are_counted_apart(family: tuple[str, Capture]) -> None:
    name, capture = family
    parent, child = logging.getLogger(name), logging.getLogger(f"{name}.conn")
    throttle = throttle_repeated_logs(logger_names=(name,), every_s=5.0, clock=FakeClock())
    for _ in range(3):
        parent.warning("timeout")
        parent.warning("retrying")
        child.warning("timeout")  # a descendant made before install: covered, counted on its own
    assert capture.lines == ["timeout", "retrying", "timeout"]
    throttle.remove()


def test_a_child_logger_made_after_install_is_not_covered(family: tuple[str, Capture]) -> None:
    name, capture = family
    throttle = throttle_repeated_logs(logger_names=(name,), every_s=5.0, clock=FakeClock())
    late = logging.getLogger(f"{name}.late-{uuid.uuid4().hex[:6]}")
    late.warning("same")
    late.warning("same")
    assert capture.lines == ["same", "same"]
    throttle.remove()


def test_on_handlers_every_descendant_is_covered_and_judged_once(
    family: tuple[str, Capture],
) -> None:
    name, capture = family
    second = Capture()
    logging.getLogger(name).addHandler(second)
    clock = FakeClock()
    throttle = throttle_repeated_logs(
        logger_names=(name,), every_s=5.0, handlers=[capture, second], clock=clock
    )
    late = logging.getLogger(f"{name}.late-{uuid.uuid4().hex[:6]}")
    for _ in range(4):
        late.info("poll failed")
    clock.now += 5.0
    late.info("poll failed")
    expected = ["poll failed", "poll failed (repeated 3 times in the last 5 s)"]
    assert capture.lines == expected
    assert second.lines == expected  # the second handler neither counts again nor drops more
    throttle.remove()
    logging.getLogger(name).removeHandler(second)


def test_other_loggers_pass_untouched(family: tuple[str, Capture]) -> None:
    name, capture = family
    throttle = RepeatedLogThrottle(5.0, logger_names=("aiokafka",), clock=FakeClock())
    throttle.install_on(capture)
    throttle.install_on(capture)  # once only
    assert capture.filters.count(throttle) == 1
    for _ in range(3):
        logging.getLogger(name).warning("not ours")
    assert capture.lines == ["not ours"] * 3
    assert throttle.covers("aiokafka.conn") and throttle.covers("aiokafka")
    assert not throttle.covers("aiokafkax")
    throttle.remove()


def test_remove_lets_every_record_through_again(family: tuple[str, Capture]) -> None:
    name, capture = family
    throttle = throttle_repeated_logs(logger_names=(name,), every_s=5.0, clock=FakeClock())
    log = logging.getLogger(name)
    log.warning("x")
    log.warning("x")
    throttle.remove()
    log.warning("x")
    assert capture.lines == ["x", "x"]
    assert throttle not in log.filters


def test_forgotten_kinds_pass_again(family: tuple[str, Capture]) -> None:
    name, capture = family
    throttle = RepeatedLogThrottle(5.0, logger_names=(name,), clock=FakeClock(), max_kinds=2)
    throttle.install_on(capture)
    log = logging.getLogger(name)
    for text in ("a", "b", "a", "c", "b"):  # "c" makes "b", the least recently seen, leave
        log.warning(text)
    assert capture.lines == ["a", "b", "c", "b"]
    throttle.remove()


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_s"):
        RepeatedLogThrottle(0.0)
