"""Installs the operator, the feedback join and the learner into a Faust app.

:func:`install` is what ``streamcascade.attach`` and ``streamcascade worker`` call. It adds to the
app: the operator agent (input topic), the feedback agent (feedback topic), the learner agent
(the single-partition demonstrations topic), a task that follows the state topic and then probes
the event loop's lag (a metric), and two timers (unmatched feedback expiry, state publishing when
the stream is quiet). Every agent waits until the newest model state has been loaded before it
handles its first record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamcascade.errors import ConfigurationError
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.acks import OffsetOrderAcks, Revocations
from streamcascade.operators.batching import DEFAULT_BATCH_TIME_S, micro_batches
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.decision_log import DecisionLog
from streamcascade.operators.learner_agent import DEFAULT_PUBLISH_INTERVAL_S, Learner
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.operator import (
    CascadeOperator,
    FeedbackResult,
    InRecord,
    Outgoing,
    Sender,
    write_all,
)
from streamcascade.operators.state_store import STATE_KEY, Snapshot, StateSigner, StateWatcher
from streamcascade.operators.topics import (
    ensure_dead_letter_topic,
    partition_counts,
    topic_max_bytes,
)

log = logging.getLogger(__name__)


@dataclass
class OperatorTopics:
    """The topics of one operator. ``demonstrations`` defaults to ``<app id>-demonstrations``."""

    source: str
    sink: str
    feedback: str | None = None
    dlq: str | None = None
    state: str | None = None
    demonstrations: str | None = None


@dataclass
class OperatorOptions:
    """How the operator batches, joins and learns (see :class:`streamcascade.settings.Settings`)."""

    batch_size: int = 100
    batch_time_s: float = DEFAULT_BATCH_TIME_S
    learn_batch_size: int = 500
    learn_batch_time_s: float = 0.5
    publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S
    decision_ttl_s: float = 600.0
    decision_log_size: int = 100_000
    state_max_bytes: int = 64 * 1024 * 1024
    publish_llm_feedback: bool = True
    metrics_window: int = 1000
    fetch_max_wait_ms: int = 10
    max_in_flight_batches: int = 4
    freeze_heap: bool = True


@dataclass
class OperatorHandle:
    """What :func:`install` added to the app, for inspection and tests."""

    operator: CascadeOperator
    learner: Learner
    metrics: OperatorMetrics
    topics: OperatorTopics
    watcher: StateWatcher | None
    ready: asyncio.Event
    agents: dict[str, Any] = field(default_factory=dict)


def bootstrap_of(app: Any) -> str:
    """``host:port[,host:port]`` of the app's brokers (its ``broker`` setting is URLs)."""
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


def raw_topic(app: Any, name: str, **kwargs: Any) -> Any:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        **kwargs,
    )


async def send_raw(app: Any, topic: str, record: Outgoing) -> Awaitable[Any]:
    """Hand a record straight to the app's producer (Faust's own ``topic.send`` adds a layer of
    per-message objects the hot path does not need); returns the delivery future. Faust still
    flushes this producer before it commits offsets."""
    fut: Awaitable[Any] = await app.producer.send(
        topic, record.key, record.value, record.partition, None, None
    )
    return fut


#: Fetch wait per app id, read by the patched consumer factory below.
_FETCH_MAX_WAIT_MS: dict[str, int] = {}


def freeze_heap() -> None:
    """Collect once, then exempt every object alive now from later collections (``gc.freeze``).

    A worker starts with tens of thousands of long-lived objects (Faust, aiokafka, the model and
    its state); every full collection of the cyclic GC walks all of them and stops the event
    loop meanwhile (measured: 72 ms pauses at 1,000 events/s). Frozen, they are never walked
    again, and a full collection costs only what was allocated since. Startup objects that
    become garbage later are not reclaimed: a bounded, one-off cost. It is process-wide, so in a
    user's own app it covers the app's objects too; the ``freeze_heap`` setting turns it off.
    """
    gc.collect()
    gc.freeze()


def low_latency_fetch(app: Any, max_wait_ms: int) -> None:
    """Make the app's Kafka consumer wait at most ``max_wait_ms`` for a fetch to fill.

    Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to
    change it. With several topics on one broker that is a latency trap: while the input's
    records are being processed, the next fetch asks only for the quiet topics (feedback,
    demonstrations), the broker holds it for the full wait, and input records that arrive
    meanwhile wait too (measured: about 1.5 s per event at 300 events/s). Faust offers no hook,
    so this wraps its consumer factory, for this app only, and sets aiokafka's wait before the
    consumer starts.
    """
    from faust.transport.drivers import aiokafka as driver

    _FETCH_MAX_WAIT_MS[app.conf.id] = int(max_wait_ms)
    factory = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(factory, "_streamcascade", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = factory(self, transport)
        wait = _FETCH_MAX_WAIT_MS.get(self.app.conf.id)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    create_worker_consumer._streamcascade = True  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def back_off_failed_metadata_updates() -> None:
    """Wait aiokafka's ``retry_backoff_ms`` after a failed cluster metadata update.

    While the broker is down, aiokafka's (0.14) producer and fetcher ask for a metadata update as
    soon as the last one failed, and a refused connection fails at once: a tight loop that
    burned the worker's CPU and logged two errors per round, about 3,600 lines a second (16,110
    lines in a 4 s broker restart, ``test_operator_broker_restart``). With the wait, a round
    takes at least the backoff (100 ms by default). The patch is process-wide: it is the
    client's own setting, applied where aiokafka forgot it.
    """
    from aiokafka.client import AIOKafkaClient

    update = getattr(AIOKafkaClient, "_metadata_update", None)
    if update is None or getattr(update, "_streamcascade", False):
        return  # (a private method: another aiokafka may not have it; then nothing to mend)

    async def metadata_update(self: Any, *args: Any, **kwargs: Any) -> Any:
        updated = await update(self, *args, **kwargs)
        if updated is False:
            await asyncio.sleep(getattr(self, "_retry_backoff", 0.1))
        return updated

    metadata_update._streamcascade = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = metadata_update


def follow_revocations(app: Any, revocations: Revocations,
                       on_revoke: Callable[[set[Any]], None]) -> None:
    """Keep ``revocations`` in step with the app's rebalances (see :class:`Revocations`);
    ``on_revoke`` drops what the worker holds of the partitions just revoked."""
    async def revoked(_sender: Any, tps: set[Any], **_kwargs: Any) -> None:
        revocations.revoke(tps, int(app.consumer_generation_id))
        on_revoke(tps)

    async def assigned(_sender: Any, _tps: set[Any], **_kwargs: Any) -> None:
        revocations.assigned(int(app.consumer_generation_id))

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)


class PipelinedWriter:
    """Writes a batch's records, and acks its input records once the broker has them all.

    Batches are pipelined: while the broker acknowledges one batch, the agent answers the next.
    A batch's early answers are written while the LLM answers the rest of it
    (:meth:`write_early`).
    A batch's records are done only when every output and dead letter of it is written, and
    acked in offset order (:mod:`.acks`), so a batch that completes early waits for the ones
    before it. At most ``max_in_flight`` batches wait; a failed write crashes the app, leaving
    its records un-acked, to be read again.
    """

    def __init__(self, app: Any, acks: OffsetOrderAcks, send: Sender,
                 max_in_flight: int = 4) -> None:
        self.app = app
        self.acks = acks
        self.send = send
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: set[asyncio.Future[None]] = set()  # referenced until done
        self._early: list[asyncio.Future[Any]] = []  # of the batch being answered

    def write_early(self, outgoing: Sequence[Outgoing]) -> None:
        """Start writing records of the batch being answered now (its early answers); the
        batch's :meth:`write_then_ack` waits for them too before it acks."""
        if outgoing:  # one task for them all: a task per record costs the loop more than a send
            self._early.append(asyncio.ensure_future(self._deliver(list(outgoing))))

    async def _deliver(self, records: list[Outgoing]) -> Any:
        return await asyncio.gather(*[await self.send(r) for r in records])

    async def write_then_ack(self, outgoing: Sequence[Outgoing], events: Sequence[Any],
                             then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write the batch's records, then ack ``events`` and run ``then`` (in the background)."""
        self.acks.track(events)  # batches come in the order read
        await self._slots.acquire()
        deliveries: list[Awaitable[Any]] = list(self._early)
        self._early = []
        deliveries += [await self.send(record) for record in outgoing]
        task = asyncio.ensure_future(self._ack_when_written(deliveries, list(events), then))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _ack_when_written(self, deliveries: list[Awaitable[Any]], events: list[Any],
                                then: Callable[[], Awaitable[None]] | None) -> None:
        try:
            if deliveries:
                await asyncio.gather(*deliveries)
        except Exception as exc:
            log.error("writing a batch failed; its records stay un-acked: %s", exc)
            await self.app.crash(exc)
            return
        finally:
            self._slots.release()
        await self.acks.done(events)
        if then is not None:
            await then()


async def run_or_crash(app: Any, name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run an agent's loop; an error the loop does not handle stops the worker.

    Faust would restart the agent on the same stream with a fresh :class:`OffsetOrderAcks`: the
    records the failed run holds would never be acked, and the new run's acks would reach Faust
    around them (the gap it can commit past). A restarted worker reads them all again."""
    try:
        await loop()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("the %s agent failed; stopping the worker (its records are read again)",
                      name)
        await app.crash(exc)


async def probe_loop_lag(metrics: OperatorMetrics, interval_s: float = 0.05) -> None:
    """Observe, every ``interval_s``, how late the event loop woke this task: the length of the
    stalls (a long callback, a GC pause, a busy machine) that every event waits out as well."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - start - interval_s))


def record_of(event: Any) -> InRecord:
    message = event.message
    return InRecord(
        key=message.key,
        value=message.value,
        position=SourcePosition(message.topic, message.partition, message.offset),
        received_at=message.time_in if message.time_in is not None else time.monotonic(),
        handle=event,
    )


def install(
    app: Any,
    cascade: Any,
    topics: OperatorTopics,
    *,
    codec: RecordCodec | None = None,
    signer: StateSigner | None = None,
    options: OperatorOptions | None = None,
    metrics: OperatorMetrics | None = None,
) -> OperatorHandle:
    """Add the operator's agents to ``app``; see the module docstring."""
    codec = codec or RecordCodec()
    options = options or OperatorOptions()
    if topics.state is not None and signer is None:
        raise ConfigurationError("a state topic needs a signing key (state_signing_key)")
    stage_names = [s.name for s in cascade.stages] + [cascade.llm.name]
    metrics = metrics or OperatorMetrics(stage_names, window=options.metrics_window)
    decision_log = DecisionLog(options.decision_ttl_s, options.decision_log_size,
                               options.decision_log_size)
    operator = CascadeOperator(
        cascade, codec, decision_log, metrics,
        publish_llm_feedback=options.publish_llm_feedback and bool(topics.feedback))
    # The operator holds some acks on purpose (feedback waiting for its event, demonstrations
    # until a state includes them); a stop or a rebalance must not wait for them: they are
    # simply read again by whoever holds the partition next.
    app.conf.stream_wait_empty = False
    low_latency_fetch(app, options.fetch_max_wait_ms)
    back_off_failed_metadata_updates()
    demonstrations = topics.demonstrations or f"{app.conf.id}-demonstrations"
    topics.demonstrations = demonstrations
    ready = asyncio.Event()
    learner_streams: list[Any] = []  # the learner agent's stream, once it runs (to ack)

    sinks: dict[str, Any] = {"output": raw_topic(app, topics.sink)}
    if topics.dlq:
        sinks["dlq"] = raw_topic(app, topics.dlq,
                                 config={"max.message.bytes": str(dl.MAX_BYTES)})
    if topics.feedback:
        sinks["feedback"] = raw_topic(app, topics.feedback)
    sinks["demonstrations"] = raw_topic(app, demonstrations, partitions=1, internal=True)
    # A snapshot is one record of a few MB, a dead letter up to dl.MAX_BYTES: let the producer
    # send them. It reads this when the app starts, so setting it now is in time; Faust warns
    # only because the comparison below reads the value.
    largest = max(options.state_max_bytes if topics.state else 0,
                  dl.MAX_BYTES if topics.dlq else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if app.conf.producer_max_request_size < largest:
            app.conf.producer_max_request_size = largest
    state_topic = None
    if topics.state:
        state_topic = raw_topic(
            app, topics.state, partitions=1, internal=True, compacting=True,
            config={"max.message.bytes": str(options.state_max_bytes)},
        )

    async def send(record: Outgoing) -> Awaitable[Any]:
        topic = sinks.get(record.topic)
        if topic is None:  # no dead-letter topic configured: say so loudly, never silently
            log.error("no %s topic configured; dropping a record: %s", record.topic,
                      record.value[:200].decode("utf-8", "replace"))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return await send_raw(app, topic.get_topic_name(), record)

    async def publish(blob: bytes) -> None:
        assert state_topic is not None
        delivery = await state_topic.send(key=STATE_KEY, value=blob)
        await delivery

    watcher: StateWatcher | None = None

    def apply(snapshot: Snapshot) -> None:
        if snapshot.version <= cascade.version:  # never roll back (the learner may be ahead)
            return
        cascade.load_state(snapshot.payload)
        learner.state_replaced()
        learner.published_version = max(learner.published_version, snapshot.version)
        metrics.model_version.set(cascade.version)
        log.info("loaded model state version %d", snapshot.version)

    revocations = Revocations()  # shared by every agent of this worker
    learner = Learner(cascade, signer or StateSigner(b"unused-no-state-topic"), publish, metrics,
                      options.publish_interval_s, revocations=revocations)
    if topics.state and signer is not None:
        watcher = StateWatcher(bootstrap_of(app), topics.state, signer, apply,
                               on_refused=lambda _reason: metrics.states_refused.inc(),
                               max_bytes=options.state_max_bytes + 1024 * 1024,
                               on_failure=app.crash)
    handle = OperatorHandle(operator, learner, metrics, topics, watcher, ready)

    @app.task
    async def load_model_state() -> None:
        if topics.dlq:
            # A dead-letter topic made elsewhere (an older version, an admin, a user of attach)
            # may take less than dl.MAX_BYTES, or be missing: a dead letter it refused would
            # stop the stream.
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, ensure_dead_letter_topic, bootstrap_of(app),
                                           topics.dlq)
            except ConfigurationError as refused:  # say why, and stop: dead letters need it
                log.error("%s", refused)
                await app.crash(refused)
                return
            limit = await loop.run_in_executor(None, topic_max_bytes, bootstrap_of(app),
                                               topics.dlq)
            if limit is not None and limit < dl.MAX_BYTES:
                log.warning("dead-letter topic %s takes records of at most %d bytes: originals "
                            "over about %d bytes are cut in their dead letters", topics.dlq,
                            limit, dl.original_limit(limit))
                operator.dead_letter_max_bytes = limit
        if topics.feedback:
            counts = await asyncio.get_running_loop().run_in_executor(
                None, partition_counts, bootstrap_of(app))
            n_in, n_fb = counts.get(topics.source), counts.get(topics.feedback)
            if n_in and n_fb and n_in != n_fb:
                exc = ConfigurationError(
                    f"feedback topic {topics.feedback!r} has {n_fb} partitions and input topic "
                    f"{topics.source!r} has {n_in}: they must be equal (co-partitioned)")
                log.error("%s", exc)
                await app.crash(exc)
                return
        if watcher is not None:
            try:
                await watcher.start()
            except Exception as exc:
                log.error("cannot read the model state topic %s: %s", topics.state, exc)
                await app.crash(exc)  # serving without the fleet's state would roll it back
                return
        metrics.model_version.set(cascade.version)
        if options.freeze_heap:
            freeze_heap()
        ready.set()
        await probe_loop_lag(metrics)  # until the worker stops

    async def stop_watcher(*_args: Any, **_kwargs: Any) -> None:
        if learner_streams and state_topic is not None:
            # A clean stop publishes what was learned since the last state (and acks it).
            with contextlib.suppress(Exception):
                await learner.maybe_publish(learner_streams[0].ack, force=True)
        if watcher is not None:
            await watcher.stop()

    app.on_before_shutdown.connect(stop_watcher)
    prefix = f"streamcascade-{topics.source}"

    # Each agent's ack tracker, once it runs.
    input_acks: list[OffsetOrderAcks] = []
    feedback_acks: list[OffsetOrderAcks] = []

    def forget_revoked(revoked: set[Any]) -> None:
        # Records of partitions a rebalance took away are read again by their next owner (this
        # worker too, if it gets them back): acking them, acting on them, or dead-lettering
        # their waiting feedback when it expires, would be wrong here.
        dropped = sum(acks.forget(revoked) for acks in input_acks + feedback_acks)
        dropped += learner.forget(revoked)
        waiting = decision_log.forget_feedback({(tp.topic, tp.partition) for tp in revoked})
        if dropped or waiting:
            log.info("partitions revoked: %d records left un-acked, %d waiting feedback "
                     "records forgotten; their next owner reads them again", dropped,
                     len(waiting))

    follow_revocations(app, revocations, forget_revoked)

    @app.timer(1.0)
    async def report_held_acks() -> None:
        for name, trackers in (("input", input_acks), ("feedback", feedback_acks)):
            if trackers:
                metrics.acks_held.labels(name).set(trackers[0].held)

    async def operator_agent(stream: Any) -> None:
        await ready.wait()
        writer = PipelinedWriter(app, OffsetOrderAcks(stream.ack, revocations), send,
                                 options.max_in_flight_batches)
        input_acks.append(writer.acks)

        async def loop() -> None:
            async for batch in micro_batches(stream, options.batch_size, options.batch_time_s):
                events = revocations.fresh(batch)  # (collected before a revoke: not ours)
                if not events:
                    continue
                outgoing = await operator.handle_events([record_of(e) for e in events],
                                                        writer.write_early)
                # Feedback that waited for these events is done once their demonstrations are
                # written (it exists only where the feedback agent runs).
                joined = operator.take_joined_feedback()
                then = functools.partial(feedback_acks[0].done, joined) if joined else None
                await writer.write_then_ack(outgoing, events, then)

        await run_or_crash(app, "operator", loop)

    handle.agents["operator"] = app.agent(
        raw_topic(app, topics.source), name=f"{prefix}-operator"
    )(operator_agent)

    if topics.feedback:
        async def feedback_agent(stream: Any) -> None:
            await ready.wait()
            acks = OffsetOrderAcks(stream.ack, revocations)
            feedback_acks.append(acks)

            async def loop() -> None:
                async for batch in micro_batches(stream, options.batch_size,
                                                 options.batch_time_s):
                    events = revocations.fresh(batch)
                    if not events:
                        continue
                    acks.track(events)
                    result = operator.handle_feedback([record_of(e) for e in events])
                    await write_all(send, result.outgoing)
                    await acks.done(result.ack)

            await run_or_crash(app, "feedback", loop)

        handle.agents["feedback"] = app.agent(sinks["feedback"], name=f"{prefix}-feedback")(
            feedback_agent
        )

        @app.timer(1.0)
        async def expire_feedback() -> None:
            if not feedback_acks:
                return
            result = FeedbackResult()
            operator.expire_into(result)
            if result.outgoing:
                await write_all(send, result.outgoing)
                await feedback_acks[0].done(result.ack)

    async def learner_agent(stream: Any) -> None:
        await ready.wait()
        learner.published_version = max(learner.published_version, int(cascade.version))
        learner_streams.append(stream)
        async for batch in micro_batches(stream, options.learn_batch_size,
                                         options.learn_batch_time_s):
            events = revocations.fresh(batch)
            if not events:
                continue
            await learner.learn([e.message.value for e in events],
                                [(e.message.tp, e.message.offset) for e in events])
            if state_topic is None:  # nothing to publish: learned is done
                metrics.model_version.set(cascade.version)  # (set at publication otherwise)
                for event in revocations.fresh(events):  # (a revoke may come while learning)
                    await stream.ack(event)
                continue
            learner.hold(events)
            await learner.maybe_publish(stream.ack)

    handle.agents["learner"] = app.agent(sinks["demonstrations"], name=f"{prefix}-learner")(
        learner_agent
    )

    if state_topic is not None:

        @app.timer(options.publish_interval_s)
        async def publish_quiet_state() -> None:
            if learner_streams:
                await learner.maybe_publish(learner_streams[0].ack)

    return handle
