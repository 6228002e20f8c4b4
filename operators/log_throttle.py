"""Quiet repeated log lines: the first of a kind passes, then one summary every few seconds.

A client that has lost its broker can log the same warning many times a second until the broker
is back; those lines bury everything else and cost CPU of their own. A record "of the same
kind" comes from the same logger with the same message template (``record.msg``, before its
arguments are filled in). The first one passes; the next ones within ``every_s`` seconds are
counted and dropped; the first one after that passes with a note of how many were dropped::

    Unable to connect to node 1 (repeated 812 times in the last 5 s)

The note rides on a record that passes, so the count of a burst that stops is told only when
its message comes back. Records of other loggers pass untouched.

>>> throttle = throttle_repeated_logs(logger_names=("aiokafka", "faust"), every_s=5.0)
>>> throttle.remove()
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable

from streamcascade.models.lru import LRUCache

__all__ = ["RepeatedLogThrottle", "throttle_repeated_logs"]

#: How many kinds of record a throttle remembers: a library that logs pre-formatted messages
#: makes a new "template" of every line, and those must not grow without bound.
DEFAULT_MAX_KINDS = 1024


@dataclasses.dataclass(slots=True)
class _Kind:
    passed_at: float  # when the last record of this kind passed
    dropped: int = 0  # records of this kind dropped since then


class RepeatedLogThrottle(logging.Filter):
    """A filter that lets a kind of record through at most once every ``every_s`` seconds.

    Parameters
    ----------
    every_s
        The shortest time between two records of the same kind that pass.
    logger_names
        Throttle records of these loggers and their descendants ("aiokafka" covers
        "aiokafka.conn"); others pass untouched. ``""`` stands for every logger.
    clock
        Seconds, monotonic; the tests pass a fake one.
    max_kinds
        How many kinds of record to remember; the least recently seen are forgotten.
    """

    def __init__(
        self,
        every_s: float = 5.0,
        *,
        logger_names: Iterable[str] = ("",),
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = DEFAULT_MAX_KINDS,
    ) -> None:
        super().__init__()
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.every_s = every_s
        self.logger_names = tuple(logger_names)
        self._clock = clock
        self._kinds: LRUCache[tuple[str, str], _Kind] = LRUCache(max_kinds)
        self._lock = threading.Lock()  # records come from any thread
        # A record that meets this filter on several handlers is judged once, on the first.
        self._verdict_attr = f"_streamcascade_throttle_{id(self)}"
        self._installed_on: list[logging.Logger | logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.covers(record.name):
            return True
        verdict = getattr(record, self._verdict_attr, None)
        if verdict is None:
            with self._lock:
                verdict = self._judge(record)
            setattr(record, self._verdict_attr, verdict)
        return bool(verdict)

    def covers(self, logger_name: str) -> bool:
        """Whether records of ``logger_name`` are throttled."""
        return any(
            not name or logger_name == name or logger_name.startswith(name + ".")
            for name in self.logger_names
        )

    def install_on(self, target: logging.Logger | logging.Handler) -> None:
        """Add this filter to a logger or a handler, once; :meth:`remove` takes it off again."""
        if self not in target.filters:
            target.addFilter(self)
            self._installed_on.append(target)

    def remove(self) -> None:
        """Take this filter off every logger and handler it was installed on."""
        for target in self._installed_on:
            target.removeFilter(self)
        self._installed_on.clear()

    def _judge(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = (record.name, str(record.msg))
        kind = self._kinds.get(key)
        if kind is None:
            self._kinds.put(key, _Kind(passed_at=now))
            return True
        if now - kind.passed_at < self.every_s:
            kind.dropped += 1
            return False
        if kind.dropped:
            times = "once" if kind.dropped == 1 else f"{kind.dropped} times"
            # No "%" in the note, so the record's own %-formatting is unchanged.
            record.msg = f"{record.msg} (repeated {times} in the last {now - kind.passed_at:.0f} s)"
        kind.passed_at, kind.dropped = now, 0
        return True


def throttle_repeated_logs(
    logger_names: Iterable[str],
    every_s: float = 5.0,
    *,
    handlers: Iterable[logging.Handler] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RepeatedLogThrottle:
    """Throttle repeated records of ``logger_names`` (and their descendants); return the filter.

    Without ``handlers``, the filter goes on the named loggers and on every descendant logger
    that exists now: a logger's filter never sees records of its children, and a logger created
    later (a module imported later) is not covered. With ``handlers``, it goes on those handlers
    instead and sees every record they get, whenever its logger was made; a handler replaced by a
    later logging set-up loses it. Call ``.remove()`` on the result to undo either.
    """
    throttle = RepeatedLogThrottle(every_s, logger_names=logger_names, clock=clock)
    if handlers is not None:
        for handler in handlers:
            throttle.install_on(handler)
        return throttle
    manager = logging.Logger.manager
    loggers = [logging.getLogger(name) for name in throttle.logger_names]
    loggers += [
        logger
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and throttle.covers(name)
    ]
    for logger in loggers:
        throttle.install_on(logger)
    return throttle
