"""The learner: demonstrations in, a new signed model state out.

Exactly one worker of a fleet learns. The demonstrations topic has a single partition, and Kafka
gives a partition of a consumer group to one member at a time: whichever worker holds it is the
learner. When that worker leaves or dies, the group hands the partition to another worker, which
already serves the newest published state (every worker follows the state topic) and goes on from
the last committed demonstration. Demonstrations are acked only after a state that includes them
has been published, so a crash repeats some learning rather than lose it, and the version only goes
up (each new state is the newest one plus the demonstrations learned since).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streamcascade.errors import UnknownLabelError
from streamcascade.models.state import compress_state
from streamcascade.models.types import Demonstration, Event
from streamcascade.operators.acks import Revocations
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.state_store import StateSigner

log = logging.getLogger(__name__)

#: Least seconds between two published states. Each is a full snapshot (0.35 MB compressed for a
#: warm HateSpeech cascade, and it grows with the River stage's vocabulary), written to the state
#: topic and read back by every worker; every 2 s, the earlier default, that was a steady stream
#: of writes, and each publication delayed the answers around it (bench kafka). Other workers
#: serve the learner's updates this much later; a new learner re-learns at most this much.
DEFAULT_PUBLISH_INTERVAL_S = 10.0


def decode_demonstration(raw: bytes | None, labels: Any) -> Demonstration | None:
    """A demonstration record (written by the operator) as a :class:`Demonstration`, or None."""
    try:
        record = json.loads(raw or b"")
        return Demonstration(
            Event(str(record["id"]), str(record["text"])),
            labels.index(record["label"]),
            str(record.get("source") or "ground_truth"),
        )
    except (ValueError, KeyError, TypeError, UnknownLabelError) as exc:
        # Only the operator writes this internal topic; a bad record is a bug, not user input.
        log.warning("skipped a malformed demonstration record: %s", type(exc).__name__)
        return None


class Learner:
    """Learns demonstrations into the cascade and publishes its state, at most every
    ``publish_interval_s`` seconds.

    Parameters
    ----------
    cascade
        The cascade this worker serves (the learner's updates are served at once).
    signer
        Signs each published state.
    publish
        Writes a signed state to the state topic and returns once the broker has it.
    metrics
        Where counts go.
    publish_interval_s
        Smallest time between two published states (each is a full snapshot).
    learn_slice
        Demonstrations learned between two turns of the event loop.
    revocations
        The worker's record of revoked partitions: held records read before a revoke are never
        acked here.
    """

    def __init__(
        self,
        cascade: Any,
        signer: StateSigner,
        publish: Callable[[bytes], Awaitable[None]],
        metrics: OperatorMetrics,
        publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S,
        learn_slice: int = 16,
        revocations: Revocations | None = None,
    ) -> None:
        self.cascade = cascade
        self.revocations = revocations or Revocations()
        self.signer = signer
        self.publish = publish
        self.metrics = metrics
        self.publish_interval_s = publish_interval_s
        self.learn_slice = max(1, int(learn_slice))
        #: The newest version this worker knows is published (its own, or loaded from the topic).
        self.published_version = int(cascade.version)
        self._unacked: list[Any] = []
        # Per demonstrations partition, the offset after the last demonstration this cascade
        # learned: a rebalance sends the partition back to its last commit, and what a worker
        # read again it has already learned (at least once, not twice, while it keeps it).
        self._learned_next: dict[Any, int] = {}
        # Whether this worker is the learner: it stops publishing when a rebalance takes its
        # demonstrations partition (the next learner goes on from the last commit), and starts
        # again when it learns.
        self._learning = True
        self._partitions: set[Any] = set()  # demonstrations partitions it learns from
        # The batch being learned, and how much of it is learned (see state_replaced).
        self._in_progress: list[Demonstration] = []
        self._in_progress_done = 0
        self._last_publish = float("-inf")  # the first publish is due at once
        self._lock = asyncio.Lock()

    async def learn(self, values: Sequence[bytes | None],
                    positions: Sequence[tuple[Any, int]] | None = None) -> int:
        """Learn a batch of demonstration records; returns how many were usable.

        ``positions`` (partition, offset) of each record, when given, let the learner skip the
        records it has learned already (read again after a rebalance; counted as
        ``already_learned``).

        It learns ``learn_slice`` demonstrations at a time and lets the event loop turn between
        slices, so that answering never waits for a whole batch of learning. It waits while a
        state is being published (see :meth:`maybe_publish`): records learned meanwhile would be
        acked with a state that does not include them.
        """
        if positions is not None:
            self._learning = True
            self._partitions.update(tp for tp, _ in positions)
            values = self._not_learned_yet(values, positions)
        labels = self.cascade.task.labels
        demos = [d for d in (decode_demonstration(v, labels) for v in values) if d is not None]
        if len(demos) < len(values):
            self.metrics.demonstrations_skipped.labels("malformed").inc(len(values) - len(demos))
        learned = 0
        async with self._lock:
            self._in_progress, self._in_progress_done = demos, 0
            try:
                for start in range(0, len(demos), self.learn_slice):
                    if start:
                        await asyncio.sleep(0)  # (a state may be loaded meanwhile)
                    learned += self._learn_now(demos[start:start + self.learn_slice])
                    self._in_progress_done = start + self.learn_slice
            finally:
                self._in_progress, self._in_progress_done = [], 0
        return learned

    def _not_learned_yet(self, values: Sequence[bytes | None],
                         positions: Sequence[tuple[Any, int]]) -> list[bytes | None]:
        fresh = []
        for value, (partition, offset) in zip(values, positions, strict=True):
            if offset < self._learned_next.get(partition, -1):
                continue
            self._learned_next[partition] = offset + 1
            fresh.append(value)
        if len(fresh) < len(values):
            self.metrics.demonstrations_skipped.labels("already_learned").inc(
                len(values) - len(fresh))
        return fresh

    def _learn_now(self, demos: Sequence[Demonstration]) -> int:
        try:
            self.cascade.learn(demos)
        except Exception:  # a bug in a stage must not stop serving; say so loudly
            log.exception("learning a batch of %d demonstrations failed; skipped", len(demos))
            self.metrics.demonstrations_skipped.labels("learning_failed").inc(len(demos))
            return 0
        for demo in demos:
            self.metrics.demonstrations.labels(demo.source).inc()
        return len(demos)

    def _seal(self, version: int, state: bytes, meta: dict[str, Any]) -> bytes:
        # Runs in a thread: zlib and the HMAC release the GIL while they work.
        return self.signer.sign(version, compress_state(state), meta)

    def hold(self, handles: Sequence[Any]) -> None:
        """Keep these records un-acked until a state that includes them is published (records
        read before a revoke are not this worker's to ack: they are dropped)."""
        self._unacked.extend(self.revocations.fresh(handles))

    def forget(self, tps: set[Any]) -> int:
        """A rebalance took ``tps``: drop their held records (Faust events), un-acked, for the
        partition's next owner to read again, and stop publishing until this worker learns
        again (it may no longer be the learner). Returns how many records were dropped."""
        if self._partitions & tps:
            self._partitions -= tps
            self._learning = False
        kept = [h for h in self._unacked if h.message.tp not in tps]
        dropped, self._unacked = len(self._unacked) - len(kept), kept
        return dropped

    def state_replaced(self) -> None:
        """The cascade now holds another worker's state (a newer one, published while this
        worker learned: two learners overlap for a moment when the demonstrations partition
        moves). What this worker learned is gone from the model, so it no longer skips
        demonstrations as learned, and it learns again those it holds un-acked, and those of
        the batch it is learning, so that none is acked without being in the model (some may be
        learned twice)."""
        self._learned_next.clear()
        labels = self.cascade.task.labels
        held = (decode_demonstration(getattr(h.message, "value", None), labels)
                for h in self._unacked)
        redo = [d for d in held if d is not None]
        redo += self._in_progress[:self._in_progress_done]
        if redo:
            log.warning("a newer model state replaced what this worker had learned; learning "
                        "its %d held demonstrations again", len(redo))
        for start in range(0, len(redo), self.learn_slice):
            self._learn_now(redo[start:start + self.learn_slice])

    async def maybe_publish(
        self, ack: Callable[[Any], Awaitable[Any]], force: bool = False
    ) -> bool:
        """Publish the state if it changed and the interval has passed; then ack what it covers."""
        async with self._lock:
            due = time.monotonic() - self._last_publish >= self.publish_interval_s
            if not self._learning or not (force or due):
                return False
            version = int(self.cascade.version)
            if version > self.published_version:
                stages = [s.name for s in self.cascade.stages]
                meta = {"task": self.cascade.task.name, "stages": stages}
                # Capturing the state copies arrays and holds the GIL (about 8 ms for a warm
                # HateSpeech cascade), so it runs here, between two batches, and sees a
                # consistent cascade. In a thread it fought the loop and Faust's consumer
                # thread for the GIL, took 58-62 ms, and the answers of that window waited
                # (bench kafka). Compressing and signing release the GIL: a thread.
                await asyncio.sleep(0)  # a turn of the loop between learning and capturing
                state = self.cascade.state_bytes(compress=False)
                blob = await asyncio.to_thread(self._seal, version, state, meta)
                if not self._learning:  # a rebalance took the partition while sealing
                    return False
                await self.publish(blob)
                self.published_version = max(self.published_version, version)
                self.metrics.states_published.inc()
                self.metrics.model_version.set(version)
                log.info("published model state version %d", version)
            self._last_publish = time.monotonic()
            handles, self._unacked = self._unacked, []
            for handle in self.revocations.fresh(handles):
                await ack(handle)
            return True
