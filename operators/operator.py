"""The cascade operator: micro-batches of events in, answers out, feedback joined for the learner.

One event's path: the operator agent reads a batch of raw records from the input topic
(``batching.micro_batches``, bounded in count and in the wait of its first record), decodes them
(bad ones become dead letters), asks the cascade, writes each answer to the output topic keyed by
the event id, writes the LLM's answers to the feedback topic (source ``llm``), and acks the
batch's records only once the broker has every record written for it, so that Faust commits
their offsets (at least once). The writes of a batch overlap with answering the next
(:class:`~streamcascade.operators.writer.PipelinedWriter`).

The feedback agent reads the feedback topic, which is co-partitioned with the input topic (same
partition count, keyed by event id; the operator writes the LLM's feedback to the input record's
partition number), so feedback meets its event in the :class:`DecisionLog` of the worker that
answered it. A repeat of an (event, source) the worker already took is acked and counted, not
joined again (first wins, :mod:`.demo_dedup`). Each joined pair becomes a demonstration (id,
text, label, source) on the single partition demonstrations topic that the learner reads
(:mod:`.fleet_learner`).

The model is anything that keeps the :class:`~streamcascade.models.protocol.StreamModel`
protocol (a :class:`~streamcascade.models.cascade.Cascade`): its answer to a batch carries the
decisions and the demonstrations (the LLM's answers) together.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamcascade.errors import RecordError
from streamcascade.models.programs.runtime import SharesRuns
from streamcascade.models.protocol import StreamModel
from streamcascade.models.types import (
    SOURCE_GROUND_TRUTH,
    SOURCE_LLM,
    Decision,
    Demonstration,
    Event,
)
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.decision_log import DecisionLog, Match, PendingFeedback
from streamcascade.operators.demo_dedup import NEW, DemonstrationDedup
from streamcascade.operators.key_check import KeyMismatchCheck
from streamcascade.operators.metrics import OperatorMetrics

log = logging.getLogger(__name__)


#: Expired feedback turned into dead letters in one step of the event loop: a dead letter takes
#: tens of microseconds to build, so a slice stays within a few milliseconds, and a burst of
#: unmatched feedback does not hold up the answering of events.
EXPIRY_SLICE = 50
#: Feedback records joined in one step of the event loop, for the same reason.
FEEDBACK_SLICE = 25


@dataclass(frozen=True, slots=True)
class InRecord:
    """A raw Kafka record as the operator sees it; ``handle`` is what acks it (a Faust event)."""

    key: bytes | None
    value: bytes | None
    position: dl.SourcePosition
    received_at: float
    handle: Any = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to write: to which of the operator's topics, with which key and value."""

    topic: str  # "output", "feedback", "dlq" or "demonstrations"
    key: bytes | None
    value: bytes
    partition: int | None = None


@dataclass(slots=True)
class FeedbackResult:
    """What a feedback batch produced, and which records may be acked now."""

    outgoing: list[Outgoing] = field(default_factory=list)
    ack: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class RetryBudget:
    """What is left of a batch's failed attempts, shared by the parts it is answered in."""

    left: int


def encode_demonstration(match: Match, label_name: str,
                         run: dict[str, Any] | None = None) -> bytes:
    """A demonstration record: everything the learner needs, the event's text included, and
    for a program the run that answered the event (the learner may be another worker)."""
    record: dict[str, Any] = {"id": match.event.id, "text": match.event.text,
                              "label": label_name, "source": match.feedback.source}
    if run is not None:
        record["run"] = run
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class CascadeOperator:
    """The operator's logic, free of Faust: batches of records in, records to write out.

    Parameters
    ----------
    model
        Answers events (a :class:`~streamcascade.models.cascade.Cascade`); its ``task.labels``
        name the labels.
    codec
        Reads and writes the records.
    decision_log
        Joins feedback with recent events.
    metrics
        Where counts go.
    publish_llm_feedback
        Write the LLM's answers to the feedback topic (source ``llm``), so that the learner
        imitates them.
    clock
        Monotonic seconds.
    """

    def __init__(
        self,
        model: StreamModel,
        codec: RecordCodec,
        decision_log: DecisionLog,
        metrics: OperatorMetrics,
        publish_llm_feedback: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        #: A program's runs travel with their ground truth to the fleet's learner.
        self.runs = model if isinstance(model, SharesRuns) else None
        self.codec = codec
        self.decision_log = decision_log
        self.metrics = metrics
        self.publish_llm_feedback = publish_llm_feedback
        self.clock = clock
        self.labels = model.task.labels
        self._joined_tokens: list[Any] = []
        #: The dead-letter topic's record limit (lowered at start to what the topic takes).
        self.dead_letter_max_bytes = dl.MAX_BYTES
        self.key_check = KeyMismatchCheck(
            lambda topic: metrics.record_key_mismatches.labels(topic).inc())
        #: The (event, source) keys of the feedback this worker took: a repeat is acked and
        #: counted, not joined again (the learner drops repeats too; this spares the topic).
        self.seen_feedback = DemonstrationDedup(max(decision_log.max_pending, 1000))

    # -- events ------------------------------------------------------------------------------
    def _letter(self, record: InRecord, reason: str, detail: str) -> Outgoing:
        return self._dead_letter(record.value or b"", reason, record.position, detail,
                                 record.key)

    def _dead_letter(self, raw: bytes, reason: str, position: dl.SourcePosition, detail: str,
                     key: bytes | None) -> Outgoing:
        """A dead letter that fits its topic: the detail, the key and the original cut to fit,
        each cut noted in the detail."""
        self.metrics.dead_letters.labels(reason).inc()
        limit = self.dead_letter_max_bytes
        key, key_note = dl.fitting_key(key, limit)
        raw, cut = dl.keepable(raw, limit, key)
        letter = dl.DeadLetter(raw, reason, position, detail[:dl.DETAIL_CHARS] + key_note + cut,
                               key)
        return Outgoing("dlq", key, self.codec.encode_dead_letter(letter))

    async def handle_events(
        self, records: Sequence[InRecord],
        write_early: Callable[[list[Outgoing]], None] | None = None,
    ) -> list[Outgoing]:
        """Answer a batch of input records; every record yields an output or a dead letter.

        With ``write_early``, the outputs of early answers are handed to it as soon as the
        model has them, before the LLM answers the rest of the batch (a first-stage answer
        does not wait for the LLM's latency); the returned records are then the others."""
        self.metrics.events_in.inc(len(records))
        out: list[Outgoing] = []
        events: list[Event] = []
        sources: list[InRecord] = []
        for record in records:
            try:
                events.append(self.codec.decode_event(record.value))
                sources.append(record)
            except RecordError as exc:
                out.append(self._letter(record, exc.reason, exc.detail))
                continue
            self.key_check(record.key, events[-1].id, record.position)
        # An exact repeat of an event in the batch (a producer's retry: same id, same text) is
        # the same event, answered once. A reused id with another text is answered in a later
        # round (answers, latencies and feedback are keyed by id), without early writes, so that
        # the later record's answer is written after the earlier one's.
        known: set[tuple[str, str]] = set()
        pending: list[tuple[Event, InRecord]] = []
        for event, record in zip(events, sources, strict=True):
            if (event.id, event.text) not in known:
                known.add((event.id, event.text))
                pending.append((event, record))
        hook = write_early
        while pending:
            seen: set[str] = set()
            first: list[tuple[Event, InRecord]] = []
            later: list[tuple[Event, InRecord]] = []
            for event, record in pending:
                (later if event.id in seen else first).append((event, record))
                seen.add(event.id)
            out.extend(await self._answer([e for e, _ in first], [r for _, r in first], hook))
            pending, hook = later, None
        return out

    async def _answer(self, events: list[Event], sources: list[InRecord],
                      write_early: Callable[[list[Outgoing]], None] | None,
                      retries: RetryBudget | None = None) -> list[Outgoing]:
        """Answer decoded events with distinct ids (see :meth:`handle_events`).

        Where the model fails on the batch, one bad event must not cost the others: the
        events not yet answered are answered again in halves, down to those that fail alone,
        which become dead letters. ``retries`` is what is left of the batch's budget of failed
        attempts (a few bad events take about log2(n) each; a model that fails on every event
        must not run 2n - 1 times): once it is spent, the rest are dead letters too. A failed
        attempt yields no demonstrations: its events are answered again."""
        out: list[Outgoing] = []
        written: dict[str, tuple[float, Decision]] = {}  # event id -> its early output's
        # latency and answer
        on_early = (None if write_early is None
                    else self._early_writer(events, sources, written, write_early))
        try:
            answer = await self.model.answer(events, on_early=on_early)
        except Exception as exc:  # the stream goes on
            return await self._answer_apart(exc, events, sources, written, write_early, retries)
        decisions = answer.decisions
        self.metrics.observe_llm_calls(decisions)
        now = self.clock()
        answered: list[Decision] = []
        latencies: list[float] = []
        for event, record, decision in zip(events, sources, decisions, strict=True):
            if decision.label is None:
                out.append(self._letter(record, dl.LLM_FAILED, decision.error or "no answer"))
                out.extend(self._log_event(event, None, decision.stage))
                continue
            answered.append(decision)
            if event.id in written:
                latencies.append(written[event.id][0])
            else:
                latency = now - record.received_at
                latencies.append(latency)
                out.append(Outgoing("output", self.codec.key(event.id),
                                    self.codec.encode_output(decision, latency * 1e3)))
            out.extend(self._log_event(event, decision.label_index, decision.stage))
        self.metrics.observe_batch(answered, latencies)
        partition_of = {e.id: r.position.partition for e, r in zip(events, sources, strict=True)}
        out.extend(self._expert_feedback(answer.demonstrations, partition_of))
        return out

    async def _answer_apart(self, exc: Exception, events: list[Event], sources: list[InRecord],
                            written: dict[str, tuple[float, Decision]],
                            write_early: Callable[[list[Outgoing]], None] | None,
                            retries: RetryBudget | None) -> list[Outgoing]:
        """After the model raised on ``events``: the early answers it wrote stand, and the
        others are answered again in halves (see :meth:`_answer`)."""
        out: list[Outgoing] = []
        # An early answer is an answer: counted, and its labels still teach.
        self.metrics.observe_batch([d for _, d in written.values()],
                                   [t for t, _ in written.values()])
        for event in events:
            if event.id in written:
                out.extend(self._log_event(event, written[event.id][1].label_index,
                                           written[event.id][1].stage))
        rest = [(e, r) for e, r in zip(events, sources, strict=True) if e.id not in written]
        if retries is None:
            log.error("the model failed on a batch of %d events; answering them again in "
                      "parts: those that fail alone become %s dead letters", len(events),
                      dl.CASCADE_ERROR, exc_info=exc)
            retries = RetryBudget(2 * max(1, len(events)).bit_length() + 2)
        retries.left -= 1
        if len(events) > 1 and rest and retries.left >= 0:
            half = (len(rest) + 1) // 2
            for part in (rest[:half], rest[half:]):
                if part:
                    out.extend(await self._answer([e for e, _ in part], [r for _, r in part],
                                                  write_early, retries))
            return out
        detail = f"{type(exc).__name__}: {exc}"[:300]
        if len(events) > 1:
            detail = f"{detail} (the batch's retries were spent)"
        for event, record in rest:  # it failed alone: a dead letter, its labels unheard
            log.debug("event %r: %s", event.id[:80], detail)
            out.append(self._letter(record, dl.CASCADE_ERROR, detail))
            out.extend(self._log_event(event, None, ""))
        return out

    def _log_event(self, event: Event, predicted: int | None, stage: str) -> list[Outgoing]:
        """Log an event for its feedback; the demonstrations of feedback that waited for it."""
        out = []
        for match in self.decision_log.record(event, predicted, stage):
            out.extend(self._joined(match))
            if match.token is not None:
                self._joined_tokens.append(match.token)
        return out

    def take_joined_feedback(self) -> list[Any]:
        """The tokens of waiting feedback joined since the last call: ack each once the records
        of the batch that joined it are written."""
        tokens, self._joined_tokens = self._joined_tokens, []
        return tokens

    def _early_writer(self, events: Sequence[Event], sources: Sequence[InRecord],
                      written: dict[str, tuple[float, Decision]],
                      write: Callable[[list[Outgoing]], None]) -> Callable[[list[Decision]], None]:
        """The model's ``on_early`` hook: encode early answers and hand them to ``write``,
        noting each one's latency in ``written``."""
        received = {e.id: r.received_at for e, r in zip(events, sources, strict=True)}

        def on_early(decisions: list[Decision]) -> None:
            now = self.clock()
            batch = []
            latencies: dict[str, tuple[float, Decision]] = {}
            for decision in decisions:
                latency = now - received[decision.event_id]
                batch.append(Outgoing("output", self.codec.key(decision.event_id),
                                      self.codec.encode_output(decision, latency * 1e3)))
                latencies[decision.event_id] = (latency, decision)
            write(batch)
            written.update(latencies)  # only once they are handed over

        return on_early

    def _expert_feedback(self, demos: Sequence[Demonstration],
                         partition_of: dict[str, int]) -> list[Outgoing]:
        """The LLM's answers of this batch (deferred and audited events) as feedback records."""
        if not (self.publish_llm_feedback and demos):
            return []
        out = []
        for demo in demos:
            value = self.codec.encode_feedback(
                demo.event.id, self.labels.name(demo.label), demo.source or SOURCE_LLM
            )
            # The input record's partition number: the feedback partition of the same number is
            # assigned to this worker (co-partitioned topics), so the join stays local.
            partition = partition_of.get(demo.event.id)
            out.append(Outgoing("feedback", self.codec.key(demo.event.id), value, partition))
        return out

    # -- feedback ----------------------------------------------------------------------------
    def _joined(self, match: Match) -> list[Outgoing]:
        source = match.feedback.source
        self.metrics.feedback.labels(source).inc()
        if match.lag_s >= 0:
            self.metrics.feedback_lag.observe(match.lag_s)
        if source == SOURCE_GROUND_TRUTH:
            self.metrics.observe_ground_truth(match.predicted, match.feedback.label)
        run = (self.runs.run_record(match.event.id)
               if self.runs is not None and source == SOURCE_GROUND_TRUTH else None)
        value = encode_demonstration(match, self.labels.name(match.feedback.label), run)
        return [Outgoing("demonstrations", self.codec.key(match.event.id), value)]

    def handle_feedback(self, records: Sequence[InRecord]) -> FeedbackResult:
        """Join a batch of feedback records; unmatched ones wait (un-acked) in the log."""
        result = FeedbackResult()
        for record in records:
            try:
                feedback = self.codec.decode_feedback(record.value, self.labels)
            except RecordError as exc:
                result.outgoing.append(self._letter(record, exc.reason, exc.detail))
                result.ack.append(record.handle)
                continue
            self.key_check(record.key, feedback.event_id, record.position)
            verdict = self.seen_feedback.check(feedback.event_id, feedback.source, feedback.label)
            if verdict != NEW:  # each event teaches once per source: first wins
                self.metrics.demonstrations_skipped.labels(verdict).inc()
                result.ack.append(record.handle)
                continue
            match = self.decision_log.add_feedback(
                feedback, record.value or b"", record.position, record.key, token=record.handle
            )
            if match is not None:
                result.outgoing.extend(self._joined(match))
                result.ack.append(record.handle)
        self.expire_into(result, EXPIRY_SLICE)
        return result

    def forget_waiting(self, waiting: Sequence[PendingFeedback]) -> None:
        """Waiting feedback left this worker un-acked (a rebalance): whoever reads it again
        must not take it for a repeat."""
        for entry in waiting:
            self.seen_feedback.forget(entry.feedback.event_id, entry.feedback.source)

    def expire_into(self, result: FeedbackResult, limit: int | None = None) -> bool:
        """Dead-letter feedback whose event did not come within the time-to-live, at most
        ``limit`` records of it; returns whether more is due (a caller on the event loop does
        the rest in further slices, letting events be answered between them)."""
        for waiting in self.decision_log.expire(limit):
            result.outgoing.append(self._expired_letter(waiting))
            result.ack.append(waiting.token)
        return limit is not None and self.decision_log.expiry_due()

    def _expired_letter(self, waiting: PendingFeedback) -> Outgoing:
        position = waiting.position or dl.SourcePosition("", -1, -1)
        if waiting.evicted:
            detail = (f"no event {waiting.feedback.event_id!r} before the decision log, "
                      "full, let the feedback go (its capacity in records or bytes)")
        else:
            detail = (f"no event {waiting.feedback.event_id!r} within "
                      f"{self.decision_log.ttl_s:g} s")
        return self._dead_letter(waiting.raw, dl.FEEDBACK_UNMATCHED, position, detail,
                                 waiting.key)

