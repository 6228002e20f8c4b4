"""The fine-tuned stage's training thread: demonstrations in, numbered snapshots out.

Training never runs on the thread that answers events. The stage hands each demonstration to
:meth:`SnapshotRunner.submit` (numbered in arrival order) and goes on; a background thread trains
on them in that order and, each time it has dealt with another ``every`` demonstrations, makes
snapshot ``k`` (it covers demonstrations ``0 .. k * every - 1``). The stage takes finished
snapshots between batches (:meth:`take_ready`); it never answers with weights still in training.

Two ways to pace it:

``lockstep``
    the stage waits for snapshot ``k`` when its ``k * every``-th demonstration has been learned
    (:meth:`wait_for`), so which snapshot answers which event depends on the stream alone, never
    on timing: a replay, and the bound an operator reaches while its training keeps up.
    Training still overlaps answering (the thread trains while the stream goes on between two
    snapshots); only the last step and the export are waited for. Nothing is ever dropped.
``background`` (lockstep off: an operator)
    the stream never waits. If training falls behind (more than ``max_backlog`` demonstrations
    waiting), the oldest waiting ones are dropped until ``max_backlog`` wait: the newest matter
    most on a stream that drifts, and the replay buffer still holds many of the older. Dropped
    demonstrations count toward the cadence (a snapshot still comes every ``every``
    demonstrations, trained on fewer), in :attr:`dropped`, and in a warning when dropping starts,
    then at most once every :data:`WARN_EVERY_S` seconds while it goes on.

A snapshot that fails (its export does not reproduce the weights, say) is logged and skipped:
the stage keeps answering with the one it has.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

#: The shortest time between two warnings that training is behind (the first always passes).
WARN_EVERY_S = 60.0

E = TypeVar("E")
S = TypeVar("S")

# Every live runner, so that the interpreter's exit waits for their threads: a daemon thread
# stopped inside a torch operation at exit aborts the whole process.
_RUNNERS: weakref.WeakSet[SnapshotRunner[object, object]] = weakref.WeakSet()


class SnapshotRunner(Generic[E, S]):
    """Trains on its own thread and makes a snapshot every ``every`` demonstrations.

    Parameters
    ----------
    train
        Called on the thread with consecutive demonstrations, in order.
    snapshot
        Called on the thread with ``(number, demonstrations covered)``; returns the snapshot.
    every
        Demonstrations per snapshot.
    start
        Demonstrations learned before this runner (the cadence goes on from there).
    lockstep
        Wait for snapshots at their point of the stream (see the module docstring).
    max_backlog
        Demonstrations allowed to wait before the oldest are dropped (not in lockstep).
    chunk
        Demonstrations handed to ``train`` at once at most.
    setup
        Called first on the thread (to set its torch thread count).
    """

    def __init__(self, train: Callable[[list[E]], object], snapshot: Callable[[int, int], S], *,
                 every: int, start: int = 0, lockstep: bool = False, max_backlog: int = 1000,
                 chunk: int = 8, setup: Callable[[], None] | None = None) -> None:
        if every < 1 or max_backlog < 1 or chunk < 1:
            raise ValueError("every, max_backlog and chunk must be at least 1")
        self._train = train
        self._snapshot = snapshot
        self.every = int(every)
        self.lockstep = bool(lockstep)
        self.max_backlog = int(max_backlog)
        self.chunk = int(chunk)
        self._setup = setup
        self._queue: collections.deque[tuple[int, E]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.submitted = int(start)  # demonstrations handed over, the earlier ones included
        self.seen = int(start)  # ... of which trained on or dropped
        self._next_number = int(start) // self.every + 1
        self._ready: dict[int, S | None] = {}  # finished snapshots by number (None: failed)
        self._taken = self._next_number - 1
        #: Counters, read by the stage for its reports.
        self.trained = 0
        self.dropped = 0
        self.failed = 0
        self.train_seconds = 0.0
        self.snapshot_seconds = 0.0
        self._warned_at: float | None = None  # when the last warning was given (monotonic)
        self._dropped_warned = 0  # ... and the dropped count it gave
        self._thread = threading.Thread(target=self._run, name="streamcascade-finetune",
                                        daemon=True)
        self._thread.start()
        _RUNNERS.add(self)  # type: ignore[arg-type]

    # -- the stream's side ------------------------------------------------------------------------

    def submit(self, examples: Sequence[E]) -> None:
        """Hand over demonstrations, in stream order; returns at once."""
        with self._cond:
            for example in examples:
                self._queue.append((self.submitted, example))
                self.submitted += 1
            if not self.lockstep and len(self._queue) > self.max_backlog:
                self._drop_oldest()
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        n = len(self._queue) - self.max_backlog
        for _ in range(n):
            self._queue.popleft()
        self.dropped += n
        # The dropped count toward the cadence: the thread sees the gap in the numbering.
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            log.warning("fine-tuning is behind the stream: dropped the %d oldest waiting "
                        "demonstrations since the last warning (%d dropped in all, %d wait; "
                        "at most one such warning every %g s)", self.dropped - self._dropped_warned,
                        self.dropped, len(self._queue), WARN_EVERY_S)
            self._warned_at, self._dropped_warned = now, self.dropped

    @property
    def backlog(self) -> int:
        """Demonstrations waiting to be trained on."""
        with self._cond:
            return len(self._queue)

    def due(self) -> int:
        """The newest snapshot number the demonstrations handed over call for."""
        return self.submitted // self.every

    def take_ready(self) -> S | None:
        """The newest finished snapshot not taken yet (older unfinished ones are passed over),
        or None."""
        with self._cond:
            return self._take(max(self._ready, default=0))

    def wait_for(self, number: int) -> S | None:
        """Block until snapshot ``number`` is finished (or failed) and return the newest
        finished one not taken yet."""
        with self._cond:
            while self._next_number <= number and not self._closed:
                self._cond.wait()
            return self._take(max(self._ready, default=0))

    def _take(self, number: int) -> S | None:
        if number <= self._taken:
            return None
        self._taken = number
        snapshot = None
        for n in sorted(self._ready):
            if n <= number:
                snapshot = self._ready.pop(n) or snapshot
        return snapshot

    def close(self, wait: float = 0.0) -> None:
        """Stop the thread after the demonstrations it is training on (waiting up to ``wait``
        seconds for it); the rest are dropped."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if wait > 0 and self._thread is not threading.current_thread():
            self._thread.join(wait)

    # -- the training thread ----------------------------------------------------------------------

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Only up to the next snapshot's boundary, so that it covers exactly its demos.
                boundary = self._next_number * self.every
                batch: list[E] = []
                while self._queue and len(batch) < self.chunk and self._queue[0][0] < boundary:
                    batch.append(self._queue.popleft()[1])
            if batch:
                start = time.perf_counter()
                try:
                    self._train(batch)
                except Exception:  # a bug must not end the thread unseen
                    log.exception("fine-tuning on %d demonstrations failed", len(batch))
                self.train_seconds += time.perf_counter() - start
                self.trained += len(batch)
            with self._cond:
                # Every demonstration numbered below the first still waiting is trained on or
                # dropped.
                self.seen = self._queue[0][0] if self._queue else self.submitted
                number = self.seen // self.every
                if number < self._next_number:
                    continue
                # Snapshots whose demonstrations were all dropped are passed over.
                for skipped in range(self._next_number, number):
                    self._ready[skipped] = None
            self._make_snapshot(number)

    def _make_snapshot(self, number: int) -> None:
        start = time.perf_counter()
        try:
            snapshot: S | None = self._snapshot(number, number * self.every)
        except Exception:
            log.exception("snapshot %d failed; the stage keeps the one it has", number)
            self.failed += 1
            snapshot = None
        self.snapshot_seconds += time.perf_counter() - start
        with self._cond:
            self._ready[number] = snapshot
            self._next_number = number + 1
            self._cond.notify_all()


@atexit.register
def _stop_all() -> None:
    for runner in list(_RUNNERS):
        runner.close(wait=30.0)
