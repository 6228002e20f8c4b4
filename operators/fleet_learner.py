"""The fleet's learner: demonstrations in, the model updated, a new signed model state out.

:class:`FleetLearner` is the operator's side of learning (the model's own update rule is the
model's business: :class:`~streamcascade.models.learner.ImitationLearner` for a cascade). Exactly
one worker of a fleet learns. The demonstrations topic has a single partition, and Kafka
gives a partition of a consumer group to one member at a time: whichever worker holds it is the
learner. When that worker leaves or dies, the group hands the partition to another worker, which
already serves the newest published state (every worker follows the state topic) and goes on from
the last committed demonstration. Demonstrations are acked only after a state that includes them
has been published, so a crash repeats some learning rather than lose it, and the version only goes
up (each new state is the newest one plus the demonstrations learned since).

Between the topic and the model stands a :class:`~.learning_guard.LearningGuard`: repeats of an
(event, source) are dropped, so are demonstrations over a source's budget; ground truth that
contradicts the model at an unusual rate is flagged; and a candidate version that is clearly worse
than the published one on held-back demonstrations is not published: the learner goes back to the
published state (what it learned since is dropped, and acked: it was judged) and the fleet keeps
serving that version. The guard's seen-set travels in each published state's metadata, so a
learner that takes over, after a ``kill -9`` too, drops the records it reads again that the state
already includes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streamcascade.errors import UnknownLabelError
from streamcascade.models.programs.runtime import SharesRuns
from streamcascade.models.protocol import StreamModel
from streamcascade.models.state import compress_state
from streamcascade.models.types import Demonstration, Event, LabelSet
from streamcascade.operators.acks import Revocations
from streamcascade.operators.learning_guard import LearningGuard
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.options import DEFAULTS
from streamcascade.operators.publish_gate import GateVerdict
from streamcascade.operators.state_store import StateSigner

log = logging.getLogger(__name__)


def decode_demonstration(raw: bytes | None, labels: LabelSet) -> Demonstration | None:
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


class FleetLearner:
    """Learns demonstrations into the model and publishes its state, at most every
    ``publish_interval_s`` seconds.

    Parameters
    ----------
    model
        The model this worker serves (the learner's updates are served at once).
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
    guard
        What screens demonstrations and judges a version before it is published; by default
        repeats and bursts are dropped, and nothing is held back or judged.
    """

    def __init__(
        self,
        model: StreamModel,
        signer: StateSigner,
        publish: Callable[[bytes], Awaitable[None]],
        metrics: OperatorMetrics,
        publish_interval_s: float = DEFAULTS.publish_interval_s,
        learn_slice: int = 16,
        revocations: Revocations | None = None,
        guard: LearningGuard | None = None,
    ) -> None:
        self.model = model
        # A program's policies learn from the runs the answering workers hand over.
        self._runs = model if isinstance(model, SharesRuns) else None
        self.guard = LearningGuard(model.task.labels, None) if guard is None else guard
        self.revocations = revocations or Revocations()
        self.signer = signer
        self.publish = publish
        self.metrics = metrics
        self.publish_interval_s = publish_interval_s
        self.learn_slice = max(1, int(learn_slice))
        #: The newest version this worker knows is published (its own, or loaded from the topic).
        self.published_version = int(model.version)
        self._unacked: list[Any] = []
        # Per demonstrations partition, the offset after the last demonstration this model
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
        # The published version's state (what a refused candidate goes back to), taken when the
        # learner first learns unless a state was loaded or published before; and the seen-set
        # of the newest loaded state, taken when this worker next learns.
        self._reference_state: bytes | None = None
        self._seen_to_load: dict[str, Any] | None = None
        self._learned_since_reference = 0
        #: The guard's verdict on the last candidate version.
        self.last_verdict = GateVerdict(True, "no candidate judged yet")

    async def learn(self, values: Sequence[bytes | None],
                    positions: Sequence[tuple[Any, int]] | None = None) -> int:
        """Learn a batch of demonstration records; returns how many were usable (learned now, or
        held back by the publish gate to be learned later).

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
        labels = self.model.task.labels
        self._adopt_runs(values)
        demos = [d for d in (decode_demonstration(v, labels) for v in values) if d is not None]
        if len(demos) < len(values):
            self.metrics.demonstrations_skipped.labels("malformed").inc(len(values) - len(demos))
        learned = 0
        async with self._lock:
            demos, held = self._screen(demos)
            self._in_progress, self._in_progress_done = demos, 0
            try:
                for start in range(0, len(demos), self.learn_slice):
                    if start:
                        await asyncio.sleep(0)  # (a state may be loaded meanwhile)
                    learned += self._learn_now(demos[start:start + self.learn_slice])
                    self._in_progress_done = start + self.learn_slice
            finally:
                self._in_progress, self._in_progress_done = [], 0
        return learned + held

    def _screen(self, demos: list[Demonstration]) -> tuple[list[Demonstration], int]:
        """The guard's screen (see :class:`~.learning_guard.LearningGuard`), counted; returns
        the demonstrations to learn now, and how many it held back to learn later."""
        if self._seen_to_load is not None:  # (loaded only by the worker that learns)
            if not self.guard.load(self._seen_to_load):
                self.guard.dedup.clear()  # a state without one: what it includes is unknown
            self._seen_to_load = None
        if self._reference_state is None and self.guard.gate.share > 0:
            self._reference_state = self.model.state_bytes(compress=False)
        unchanged = int(self.model.version) == self.published_version
        alarms = self.guard.watch.alarms
        screened = self.guard.screen(demos)
        for reason, count in screened.skipped.items():
            if count:
                self.metrics.demonstrations_skipped.labels(reason).inc(count)
        if screened.contradictions:
            self.metrics.feedback_contradictions.inc(screened.contradictions)
        self.metrics.poisoning_suspected.set(1 if self.guard.alarmed else 0)
        if self.guard.watch.alarms > alarms:
            self.metrics.poisoning_alarms.inc(self.guard.watch.alarms - alarms)
        if unchanged:  # the model is still the published one: reference answers for newcomers
            self.guard.still_reference()
        return screened.learn, screened.held

    def _adopt_runs(self, values: Sequence[bytes | None]) -> None:
        """Hand the model the runs that came with these demonstrations (a program's: the
        answering worker's draws, which its policies learn from here)."""
        if self._runs is None:
            return
        for value in values:
            try:
                record = json.loads(value or b"")
                run = record.get("run")
                event = Event(str(record["id"]), str(record["text"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # (decoding the demonstration says so)
            if isinstance(run, dict) and not self._runs.adopt_run(event, run):
                log.debug("event %r: its run does not fit the program; only its stages learn",
                          event.id[:80])

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
            self.model.learn(demos)
        except Exception:  # a bug in a stage must not stop serving; say so loudly
            log.exception("learning a batch of %d demonstrations failed; skipped", len(demos))
            self.metrics.demonstrations_skipped.labels("learning_failed").inc(len(demos))
            return 0
        for demo in demos:
            self.metrics.demonstrations.labels(demo.source).inc()
        self._learned_since_reference += len(demos)
        return len(demos)

    def _judged(self, version: int) -> bool:
        """Whether candidate ``version`` may be published (the guard's verdict, logged)."""
        verdict = self.guard.check()
        self.last_verdict = verdict
        for comparison in verdict.comparisons:
            if comparison.n:
                self.metrics.publish_gate_loss.labels(comparison.source).set(comparison.loss)
        if verdict.publish:
            log.debug("model version %d may be published: %s", version, verdict.reason)
        return verdict.publish

    def _roll_back(self, version: int) -> None:
        """Go back to the published state: the candidate ``version`` is refused."""
        self.metrics.states_rejected.inc()
        dropped, self._learned_since_reference = self._learned_since_reference, 0
        self.metrics.demonstrations_skipped.labels("refused_version").inc(dropped)
        log.warning("model version %d is not published: %s. The fleet keeps version %d; this "
                    "worker goes back to it, dropping the %d demonstrations learned since",
                    version, self.last_verdict.reason, self.published_version, dropped)
        if self._reference_state is not None:
            self.model.load_state(self._reference_state)
            self.metrics.model_version.set(self.model.version)
        self.guard.is_reference()

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

    def state_replaced(self, state: bytes | None = None,
                       meta: dict[str, Any] | None = None) -> None:
        """The model now holds another worker's state (a newer one, published while this
        worker learned: two learners overlap for a moment when the demonstrations partition
        moves); ``state`` and ``meta`` are that state's bytes and metadata. What this worker
        learned is gone from the model, so it no longer skips demonstrations as learned, and it
        learns again those it holds un-acked, and those of the batch it is learning, so that none
        is acked without being in the model (some may be learned twice). The loaded state's
        seen-set replaces this worker's (an older state without one empties it), so those the
        loaded state already includes are not learned again."""
        self._learned_next.clear()
        if state is not None:
            self._reference_state = state
        self._seen_to_load = dict(meta or {})
        self._learned_since_reference = 0
        self.guard.is_reference()
        labels = self.model.task.labels
        values = [getattr(h.message, "value", None) for h in self._unacked]
        self._adopt_runs(values)  # (the runs were learned from, and let go, before)
        held = (decode_demonstration(v, labels) for v in values)
        # (those the gate holds back stay held back: not learned now)
        redo = [d for d in held if d is not None and not self.guard.gate.holds_back(d.event.id)]
        redo += self._in_progress[:self._in_progress_done]
        if not redo:
            return
        if not self.guard.load(self._seen_to_load):
            self.guard.dedup.clear()
        self._seen_to_load = None
        redo = self.guard.dedup.filter(redo).fresh  # (repeats, and what the state includes)
        log.warning("a newer model state replaced what this worker had learned; learning "
                    "its %d held demonstrations again", len(redo))
        for start in range(0, len(redo), self.learn_slice):
            self._learn_now(redo[start:start + self.learn_slice])

    async def maybe_publish(
        self, ack: Callable[[Any], Awaitable[Any]], force: bool = False
    ) -> bool:
        """Publish the state if it changed and the interval has passed, unless the guard finds
        it clearly worse than the published one (then go back to that); then ack what it
        covers."""
        async with self._lock:
            due = time.monotonic() - self._last_publish >= self.publish_interval_s
            if not self._learning or not (force or due):
                return False
            version = int(self.model.version)
            if version > self.published_version and not self._judged(version):
                self._roll_back(version)
            elif version > self.published_version:
                stages = self.model.stage_names[:-1]  # the stages before the LLM
                meta = {"task": self.model.task.name, "stages": stages}
                self.guard.save(meta)
                # Capturing the state copies arrays and holds the GIL, so it runs here, between
                # two batches, and sees a consistent model. In a thread it would fight the loop
                # and Faust's consumer thread for the GIL, take several times as long, and the
                # answers of that window would wait. Compressing and signing release the GIL:
                # a thread.
                await asyncio.sleep(0)  # a turn of the loop between learning and capturing
                state = self.model.state_bytes(compress=False)
                blob = await asyncio.to_thread(self._seal, version, state, meta)
                if not self._learning:  # a rebalance took the partition while sealing
                    return False
                await self.publish(blob)
                self.published_version = max(self.published_version, version)
                self._reference_state, self._learned_since_reference = state, 0
                self.guard.is_reference()
                self.metrics.states_published.inc()
                self.metrics.model_version.set(version)
                log.info("published model state version %d", version)
            self._last_publish = time.monotonic()
            handles, self._unacked = self._unacked, []
            for handle in self.revocations.fresh(handles):
                await ack(handle)
            return True
