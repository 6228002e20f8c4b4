"""The operator in a Faust app: its parts, and the agents and timers that drive them.

:class:`OperatorRuntime` is what ``streamcascade.attach`` and ``streamcascade worker`` install.
Made, it holds the parts, free of Faust: the :class:`~.operator.CascadeOperator` (events in,
answers out, feedback joined), the :class:`~.fleet_learner.FleetLearner`, the
:class:`~.state_store.StateWatcher` that follows the fleet's model state, and the metrics.
:meth:`OperatorRuntime.install` adds to the app:

- the start-up (:mod:`.startup`: topics checked and created before the app's consumer
  subscribes, the newest model state loaded), then the event loop's lag probe; every agent
  waits until it is done;
- the operator agent (input topic), writing through a :class:`~.writer.PipelinedWriter`;
- the feedback agent (feedback topic) and a timer that dead-letters feedback whose event never
  came;
- the learner agent (the single-partition demonstrations topic) and a timer that publishes the
  model state when the stream is quiet;
- a timer reporting held acks, one logging a summary of the work (:mod:`.activity`), and the
  handling of rebalances and of a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streamcascade.errors import ConfigurationError
from streamcascade.models.protocol import StreamModel
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.acks import OffsetOrderAcks, Revocations
from streamcascade.operators.activity import ActivityLog
from streamcascade.operators.batching import micro_batches
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.decision_log import DecisionLog
from streamcascade.operators.event_loop import freeze_heap, probe_loop_lag
from streamcascade.operators.fair_fetch import fair_fetch
from streamcascade.operators.faust_io import (
    bootstrap_of,
    follow_revocations,
    raw_topic,
    record_of,
    run_or_crash,
)
from streamcascade.operators.faust_patches import (
    allow_records_of,
    back_off_failed_metadata_updates,
    low_latency_fetch,
)
from streamcascade.operators.fleet_learner import FleetLearner
from streamcascade.operators.learning_guard import LearningGuard, preview_of
from streamcascade.operators.log_throttle import RepeatedLogThrottle, throttle_repeated_logs
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.operator import (
    EXPIRY_SLICE,
    FEEDBACK_SLICE,
    CascadeOperator,
    FeedbackResult,
)
from streamcascade.operators.options import DEFAULTS, OperatorOptions
from streamcascade.operators.publish_gate import PublishGate
from streamcascade.operators.startup import StartUp, gated_topic, refresh_metadata_often
from streamcascade.operators.state_store import STATE_KEY, Snapshot, StateSigner, StateWatcher
from streamcascade.operators.topics import OperatorTopics
from streamcascade.operators.writer import PipelinedWriter, TopicSender, write_all

log = logging.getLogger(__name__)

#: The loggers of the Kafka clients, and of Faust around them: while a broker is away they repeat
#: the same lines many times a second; the repeats are summarised, one line every few seconds
#: with a count (:mod:`.log_throttle`).
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust", "mode")


class OperatorRuntime:
    """The operator's parts for one Faust app; :meth:`install` wires them into the app.

    Parameters
    ----------
    app
        A ``faust.App``; its id is the consumer group of the operator's agents.
    model
        The model served (a :class:`~streamcascade.models.cascade.Cascade`).
    topics
        The operator's topics; the demonstrations topic defaults to ``<app id>-demonstrations``.
    codec, signer, options, metrics
        How records are read and written; the key of the model state (required with a state
        topic); batching and learning options; where counts go (one for the model's stages
        when None).
    """

    def __init__(
        self,
        app: Any,
        model: StreamModel,
        topics: OperatorTopics,
        *,
        codec: RecordCodec | None = None,
        signer: StateSigner | None = None,
        options: OperatorOptions = DEFAULTS,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        if topics.state is not None and signer is None:
            raise ConfigurationError("a state topic needs a signing key (state_signing_key)")
        self.app = app
        self.model = model
        self.topics = dataclasses.replace(
            topics, demonstrations=topics.demonstrations or f"{app.conf.id}-demonstrations")
        self.options = options
        self.metrics = metrics or OperatorMetrics(model.stage_names, window=options.metrics_window)
        self.decision_log = DecisionLog(options.decision_ttl_s, options.decision_log_size,
                                        options.decision_log_size)
        self.operator = CascadeOperator(
            model, codec or RecordCodec(), self.decision_log, self.metrics,
            publish_llm_feedback=options.publish_llm_feedback and bool(topics.feedback))
        #: Which records were read before a rebalance; shared by every agent of this worker.
        self.revocations = Revocations()
        # Held-back demonstrations judge each version before it is published: only with a state
        # topic (without one, what is learned is served at once, and nothing is published).
        guard = LearningGuard(
            model.task.labels, preview_of(model),
            gate=PublishGate(share=options.holdout_share if topics.state else 0.0))
        self.learner = FleetLearner(
            model, signer or StateSigner(b"unused-no-state-topic"), self._publish_state,
            self.metrics, options.publish_interval_s, revocations=self.revocations, guard=guard)
        self.watcher: StateWatcher | None = None
        if topics.state is not None and signer is not None:
            self.watcher = StateWatcher(
                bootstrap_of(app), topics.state, signer, self._apply_state,
                on_refused=lambda _reason: self.metrics.states_refused.inc(),
                max_bytes=topics.state_max_bytes + 1024 * 1024, on_failure=app.crash)
        self.startup = StartUp(app, self.topics, options, self.operator, self.watcher)
        self.activity = ActivityLog(self.metrics, topics.source)
        #: Set once the start-up checks passed and the model state is loaded.
        self.ready = asyncio.Event()
        #: The Faust agents, by role: "operator", "feedback", "learner".
        self.agents: dict[str, Any] = {}
        # What the agents hold once they run: their ack trackers and the learner's stream.
        self._input_acks: OffsetOrderAcks | None = None
        self._feedback_acks: OffsetOrderAcks | None = None
        self._learner_stream: Any = None
        self._send = TopicSender(app, {})
        self._state_topic: Any = None
        #: What summarises the Kafka clients' repeated log lines, once the worker starts.
        self.log_throttle: RepeatedLogThrottle | None = None

    # -- wiring ------------------------------------------------------------------------------
    def install(self) -> OperatorRuntime:
        """Add the operator's agents, timers and tasks to the app (once); returns self."""
        app, topics, options = self.app, self.topics, self.options
        # The operator holds some acks on purpose (feedback waiting for its event,
        # demonstrations until a state includes them); a stop or a rebalance must not wait for
        # them: they are simply read again by whoever holds the partition next.
        app.conf.stream_wait_empty = False
        low_latency_fetch(app, options.fetch_max_wait_ms)
        fair_fetch(app)  # (a flood of feedback must not hold up the events)
        back_off_failed_metadata_updates()
        refresh_metadata_often(app, options.metadata_refresh_s)
        # A snapshot is one record of a few MB, a dead letter up to dl.MAX_BYTES.
        allow_records_of(app, max(topics.state_max_bytes if topics.state else 0,
                                  dl.MAX_BYTES if topics.dlq else 0))
        assert topics.demonstrations is not None  # (named in __init__)
        sinks = {"output": topics.sink, "demonstrations": topics.demonstrations}
        if topics.dlq:
            sinks["dlq"] = topics.dlq
        if topics.feedback:
            sinks["feedback"] = topics.feedback
        self._send = TopicSender(app, sinks)
        if topics.state:
            self._state_topic = raw_topic(
                app, topics.state, partitions=1, internal=True, compacting=True,
                config={"max.message.bytes": str(topics.state_max_bytes)})

        app.task(self._start)
        app.on_before_shutdown.connect(self._on_shutdown)
        follow_revocations(app, self.revocations, self._forget_revoked)
        app.timer(1.0)(self._report_held_acks)
        app.on_partitions_assigned.connect(self._on_assigned)
        if options.summary_interval_s > 0:
            app.timer(options.summary_interval_s)(self._log_summary)
        prefix = f"streamcascade-{topics.source}"
        self.agents["operator"] = app.agent(
            raw_topic(app, topics.source), name=f"{prefix}-operator")(self._operator_agent)
        if topics.feedback:
            self.agents["feedback"] = app.agent(
                raw_topic(app, topics.feedback), name=f"{prefix}-feedback")(self._feedback_agent)
            app.timer(1.0)(self._expire_feedback)
        # The start-up checks run before the app's consumer subscribes: see gated_topic.
        demonstrations = gated_topic(app, topics.demonstrations, self.startup.topics_ready,
                                     partitions=1, internal=True)
        self.agents["learner"] = app.agent(
            demonstrations, name=f"{prefix}-learner")(self._learner_agent)
        if self._state_topic is not None:
            app.timer(options.publish_interval_s)(self._publish_quiet_state)
        return self

    # -- start and stop ----------------------------------------------------------------------
    async def _start(self) -> None:
        """The start-up checks and the newest model state; then the loop-lag probe, until the
        worker stops."""
        self.quiet_client_logs()
        if not await self.startup.run():
            return
        self.metrics.model_version.set(self.model.version)
        if self.options.freeze_heap:
            freeze_heap()
        self.ready.set()
        log.info("ready: serving model version %d", self.model.version)
        self.activity.announce()
        await probe_loop_lag(self.metrics)

    async def _on_assigned(self, _sender: Any, assigned: set[Any], **_kwargs: Any) -> None:
        self.activity.assigned((tp.topic, tp.partition) for tp in assigned)
        if self.ready.is_set():  # (else announced once ready)
            self.activity.announce()

    async def _log_summary(self) -> None:
        if self.ready.is_set():
            log.info("%s", self.activity.summary(self.model.version))

    def quiet_client_logs(self) -> None:
        """Summarise the Kafka clients' repeated log lines (see :data:`CLIENT_LOGGERS`), once:
        on their loggers that exist now, and on the root logger's handlers, which also see the
        records of loggers made later."""
        if self.log_throttle is None:
            self.log_throttle = throttle_repeated_logs(CLIENT_LOGGERS)
            for handler in logging.getLogger().handlers:
                self.log_throttle.install_on(handler)

    async def _on_shutdown(self, *_args: Any, **_kwargs: Any) -> None:
        if self._learner_stream is not None and self._state_topic is not None:
            # A clean stop publishes what was learned since the last state (and acks it).
            with contextlib.suppress(Exception):
                await self.learner.maybe_publish(self._learner_stream.ack, force=True)
        if self.watcher is not None:
            await self.watcher.stop()
        if self.log_throttle is not None:
            self.log_throttle.remove()
            self.log_throttle = None

    # -- model state -------------------------------------------------------------------------
    async def _publish_state(self, blob: bytes) -> None:
        assert self._state_topic is not None  # (the learner publishes only with a state topic)
        from aiokafka.errors import MessageSizeTooLargeError

        try:
            delivery = await self._state_topic.send(key=STATE_KEY, value=blob)
            await delivery
        except MessageSizeTooLargeError:
            # The broker's own error names no topic and no size: say which, and what to do.
            raise ConfigurationError(
                f"model-state topic {self.topics.state} refused a state of {len(blob)} bytes "
                f"(its max.message.bytes is lower); raise it to {self.topics.state_max_bytes} "
                "(state_max_bytes)") from None

    def _apply_state(self, snapshot: Snapshot) -> None:
        """Serve a newer state of the fleet (the watcher's callback)."""
        if snapshot.version <= self.model.version:  # never roll back (the learner may be ahead)
            return
        self.model.load_state(snapshot.payload)
        self.learner.state_replaced(snapshot.payload, snapshot.meta)
        self.learner.published_version = max(self.learner.published_version, snapshot.version)
        self.metrics.model_version.set(self.model.version)
        log.info("loaded model state version %d", snapshot.version)

    async def _publish_quiet_state(self) -> None:
        if self._learner_stream is not None:
            await self.learner.maybe_publish(self._learner_stream.ack)

    # -- rebalances and held acks ------------------------------------------------------------
    def _forget_revoked(self, revoked: set[Any]) -> None:
        # Records of partitions a rebalance took away are read again by their next owner (this
        # worker too, if it gets them back): acking them, acting on them, or dead-lettering
        # their waiting feedback when it expires, would be wrong here.
        trackers = [a for a in (self._input_acks, self._feedback_acks) if a is not None]
        dropped = sum(acks.forget(revoked) for acks in trackers)
        dropped += self.learner.forget(revoked)
        waiting = self.decision_log.forget_feedback({(tp.topic, tp.partition) for tp in revoked})
        self.operator.forget_waiting(waiting)
        if dropped or waiting:
            log.info("partitions revoked: %d records left un-acked, %d waiting feedback "
                     "records forgotten; their next owner reads them again", dropped,
                     len(waiting))

    async def _report_held_acks(self) -> None:
        for name, acks in (("input", self._input_acks), ("feedback", self._feedback_acks)):
            if acks is not None:
                self.metrics.acks_held.labels(name).set(acks.held)

    # -- the agents --------------------------------------------------------------------------
    async def _operator_agent(self, stream: Any) -> None:
        await self.ready.wait()
        writer = PipelinedWriter(self.app, OffsetOrderAcks(stream.ack, self.revocations),
                                 self._send, self.options.max_in_flight_batches)
        self._input_acks = writer.acks
        await run_or_crash(self.app, "operator",
                           functools.partial(self._answer_events, stream, writer))

    async def _answer_events(self, stream: Any, writer: PipelinedWriter) -> None:
        options = self.options
        async for batch in micro_batches(stream, options.batch_size, options.batch_time_s):
            events = self.revocations.fresh(batch)  # (collected before a revoke: not ours)
            if not events:
                continue
            outgoing = await self.operator.handle_events([record_of(e) for e in events],
                                                         writer.write_early)
            # Feedback that waited for these events is done once their demonstrations are
            # written.
            await writer.write_then_ack(outgoing, events,
                                        self._feedback_done(self.operator.take_joined_feedback()))

    def _feedback_done(self, tokens: list[Any]) -> Callable[[], Awaitable[None]] | None:
        """What acks the joined feedback ``tokens`` (None if there are none)."""
        if not tokens:
            return None
        assert self._feedback_acks is not None  # (only the feedback agent's records wait)
        return functools.partial(self._feedback_acks.done, tokens)

    async def _feedback_agent(self, stream: Any) -> None:
        await self.ready.wait()
        acks = OffsetOrderAcks(stream.ack, self.revocations)
        self._feedback_acks = acks
        await run_or_crash(self.app, "feedback",
                           functools.partial(self._join_feedback, stream, acks))

    async def _join_feedback(self, stream: Any, acks: OffsetOrderAcks) -> None:
        options = self.options
        # Feedback is not in a hurry: small batches, so that a burst of it is handled in short
        # steps and events are answered between them.
        size = min(options.batch_size, FEEDBACK_SLICE)
        async for batch in micro_batches(stream, size, options.batch_time_s):
            events = self.revocations.fresh(batch)
            if not events:
                continue
            acks.track(events)
            result = self.operator.handle_feedback([record_of(e) for e in events])
            await write_all(self._send, result.outgoing)
            await acks.done(result.ack)

    async def _expire_feedback(self) -> None:
        """Dead-letter the feedback that expired, a slice at a time (see
        :data:`~.operator.EXPIRY_SLICE`): the loop answers events between two slices."""
        if self._feedback_acks is None:
            return
        more = True
        while more:
            result = FeedbackResult()
            more = self.operator.expire_into(result, EXPIRY_SLICE)
            if result.outgoing:
                await write_all(self._send, result.outgoing)
                await self._feedback_acks.done(result.ack)
            await asyncio.sleep(0)

    async def _learner_agent(self, stream: Any) -> None:
        await self.ready.wait()
        learner, options = self.learner, self.options
        learner.published_version = max(learner.published_version, int(self.model.version))
        self._learner_stream = stream
        async for batch in micro_batches(stream, options.learn_batch_size,
                                         options.learn_batch_time_s):
            events = self.revocations.fresh(batch)
            if not events:
                continue
            await learner.learn([e.message.value for e in events],
                                [(e.message.tp, e.message.offset) for e in events])
            if self._state_topic is None:  # nothing to publish: learned is done
                self.metrics.model_version.set(self.model.version)  # (else set at publication)
                for event in self.revocations.fresh(events):  # (a revoke may come while learning)
                    await stream.ack(event)
                continue
            learner.hold(events)
            await learner.maybe_publish(stream.ack)
