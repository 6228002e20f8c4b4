"""A pass-through agent: the baseline of ``streamcascade bench kafka``.

It does everything the operator does around the model (the same micro-batches, consumer
settings and heap handling, decoding, an output per event keyed by id, the same pipelined writer
that acks only what the broker has, the event-loop lag probe) and nothing else, so that the
benchmark measures what the model costs on top of Faust and Kafka.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamcascade.errors import RecordError
from streamcascade.models.types import Decision
from streamcascade.operators.acks import OffsetOrderAcks, Revocations
from streamcascade.operators.batching import micro_batches
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.event_loop import freeze_heap, probe_loop_lag
from streamcascade.operators.faust_io import follow_revocations, raw_topic, record_of, run_or_crash
from streamcascade.operators.faust_patches import (
    back_off_failed_metadata_updates,
    low_latency_fetch,
)
from streamcascade.operators.metrics import OperatorMetrics
from streamcascade.operators.operator import Outgoing
from streamcascade.operators.options import DEFAULTS, OperatorOptions
from streamcascade.operators.writer import PipelinedWriter, TopicSender


def install_passthrough(
    app: Any,
    source: str,
    sink: str,
    codec: RecordCodec | None = None,
    options: OperatorOptions = DEFAULTS,
    metrics_port: int | None = None,
) -> Any:
    """Add the pass-through agent to ``app``, set up as the operator would be; returns the
    agent. With ``metrics_port``, the event-loop lag is served there (Prometheus)."""
    codec = codec or RecordCodec()
    metrics = OperatorMetrics(["passthrough"])
    if metrics_port is not None:
        metrics.serve(metrics_port)
    low_latency_fetch(app, options.fetch_max_wait_ms)
    back_off_failed_metadata_updates()
    send = TopicSender(app, {"output": sink})

    async def passthrough_agent(stream: Any) -> None:
        if options.freeze_heap:
            freeze_heap()
        probe = asyncio.ensure_future(probe_loop_lag(metrics))
        revocations = Revocations()
        writer = PipelinedWriter(app, OffsetOrderAcks(stream.ack, revocations), send,
                                 options.max_in_flight_batches)

        follow_revocations(app, revocations, writer.acks.forget)  # as the operator

        async def loop() -> None:
            async for batch in micro_batches(stream, options.batch_size, options.batch_time_s):
                events = revocations.fresh(batch)
                outgoing = []
                now = time.monotonic()
                for record in (record_of(e) for e in events):
                    try:
                        event = codec.decode_event(record.value)
                    except RecordError:
                        continue
                    decision = Decision(event.id, None, None, "passthrough", 0, 1.0, 0.0, [])
                    value = codec.encode_output(decision, (now - record.received_at) * 1e3)
                    outgoing.append(Outgoing("output", codec.key(event.id), value))
                await writer.write_then_ack(outgoing, events)

        try:
            await run_or_crash(app, "pass-through", loop)
        finally:
            probe.cancel()

    return app.agent(raw_topic(app, source), name=f"passthrough-{source}")(passthrough_agent)
