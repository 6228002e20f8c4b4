"""Prometheus metrics of one worker, in a registry of its own, served over HTTP on request.

Counters and histograms are updated once per micro-batch where they can be (the hot path stays
lean); the rolling figures (deferral rate per stage, quality on feedback) are gauges computed over
a window of recent events. A live LLM's own figures (its circuit breaker, hedges, timeouts) are
read from its health report when Prometheus scrapes (:meth:`OperatorMetrics.watch_llm`), and so
are the figures of stages that train in the background (:meth:`OperatorMetrics.watch_training`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamcascade.models.llm.base import ReportsHealth
from streamcascade.models.training import BACKLOG, DROPPED, ReportsTraining
from streamcascade.models.types import Decision
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.options import DEFAULTS

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: A live LLM's running totals, as counters: (key in its health report, metric name, help).
_LLM_COUNTERS = (
    ("requests", "streamcascade_llm_requests", "Requests sent to the LLM, hedges included"),
    ("retries", "streamcascade_llm_retries", "Requests sent again after one failed"),
    ("hedges", "streamcascade_llm_hedges",
     "Hedges: a request sent again beside one slower than the LLM's recent p95 latency"),
    ("hedge_wins", "streamcascade_llm_hedge_wins", "Answers that came from a hedge"),
    ("timeouts", "streamcascade_llm_timeouts", "Requests cut by the request timeout"),
    ("deadline_exceeded", "streamcascade_llm_deadline_exceeded",
     "Events given up when their deadline for an LLM answer passed"),
    ("breaker_rejections", "streamcascade_llm_breaker_rejections",
     "Events refused at once because the circuit breaker was open"),
    ("breaker_opened", "streamcascade_llm_breaker_opened", "Times the circuit breaker opened"),
)
_BREAKER_STATES = ("closed", "open", "half_open")


class OperatorMetrics:
    """The operator's metrics.

    Parameters
    ----------
    stages
        Stage names in cascade order (the last one is the LLM).
    window
        How many recent events the rolling gauges cover.
    registry
        Where the metrics live; a new registry when None, so that two operators in one process
        (tests, a user's app) never collide.
    """

    def __init__(
        self,
        stages: Sequence[str],
        window: int = DEFAULTS.metrics_window,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.stages = list(stages)
        self.window = window
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "streamcascade_events_in_total", "Records read from the input topic", registry=r
        )
        self.stage_in = Counter(
            "streamcascade_stage_events_in_total", "Events that reached a stage", ["stage"],
            registry=r,
        )
        self.stage_out = Counter(
            "streamcascade_stage_events_out_total", "Events answered by a stage", ["stage"],
            registry=r,
        )
        self.deferral_rate = Gauge(
            "streamcascade_deferral_rate",
            "Share of the events reaching a stage that it passed on (rolling window)",
            ["stage"],
            registry=r,
        )
        self.llm_share = Gauge(
            "streamcascade_llm_share", "Share of events answered by the LLM (rolling window)",
            registry=r,
        )
        self.llm_calls = Counter(
            "streamcascade_llm_calls_total",
            "Events sent to the LLM (audits and calls that failed included)", registry=r
        )
        self.cost = Counter(
            "streamcascade_cost_total",
            "Inference cost (paper units) of the events each stage answered, their whole path",
            ["stage"], registry=r,
        )
        self.dead_letters = Counter(
            "streamcascade_dead_letters_total", "Dead letters written", ["reason"], registry=r
        )
        for reason in dl.REASONS:  # every reason is a series from the start, at 0
            self.dead_letters.labels(reason)
        self.feedback = Counter(
            "streamcascade_feedback_total", "Feedback joined with its event", ["source"],
            registry=r,
        )
        self.feedback_lag = Histogram(
            "streamcascade_feedback_lag_seconds",
            "From an event's answer to its feedback's arrival", buckets=_LAG_BUCKETS, registry=r,
        )
        self.quality = Gauge(
            "streamcascade_rolling_accuracy",
            "Accuracy of the operator's answers on recent ground-truth feedback (an event it "
            "gave no answer, a dead letter, counts as wrong)", registry=r,
        )
        self.latency = Histogram(
            "streamcascade_decision_latency_seconds",
            "From reading an event to its output being handed to the producer",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.acks_held = Gauge(
            "streamcascade_acks_held",
            "Records read and not yet acked, per stream: in flight, waiting (feedback for its "
            "event), or behind one that is (acks go in offset order)", ["stream"], registry=r,
        )
        self.loop_lag = Histogram(
            "streamcascade_event_loop_lag_seconds",
            "How late the event loop ran a periodic probe: time spent on one piece of work "
            "without yielding, which every event arriving meanwhile waits too",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_version = Gauge(
            "streamcascade_model_version", "Version of the model state being served", registry=r
        )
        self.states_published = Counter(
            "streamcascade_states_published_total", "Model states this worker published",
            registry=r,
        )
        self.states_refused = Counter(
            "streamcascade_states_refused_total", "State records refused (unsigned, bad MAC)",
            registry=r,
        )
        self.demonstrations = Counter(
            "streamcascade_demonstrations_learned_total", "Demonstrations learned", ["source"],
            registry=r,
        )
        self.demonstrations_skipped = Counter(
            "streamcascade_demonstrations_skipped_total",
            "Demonstrations not learned: a malformed record or a learning step that raised "
            "(each logged), one read again after a rebalance and learned already, a repeat of "
            "an (event, source) already learned with the same label (duplicate) or another "
            "(conflicting), one over its source's or key pattern's budget (rate_limited), or "
            "one learned into a version the publish gate refused (refused_version)",
            ["reason"], registry=r,
        )
        self.feedback_contradictions = Counter(
            "streamcascade_feedback_contradictions_total",
            "Ground-truth demonstrations that contradict both the LLM and the stages answering "
            "at high confidence (learned all the same; an unusual rate raises "
            "streamcascade_poisoning_suspected)", registry=r,
        )
        self.poisoning_suspected = Gauge(
            "streamcascade_poisoning_suspected",
            "1 while ground truth contradicts the model at an unusual rate (a WARNING gives the "
            "evidence), else 0", registry=r,
        )
        self.poisoning_alarms = Counter(
            "streamcascade_poisoning_alarms_total",
            "Times streamcascade_poisoning_suspected went to 1", registry=r,
        )
        self.states_rejected = Counter(
            "streamcascade_states_rejected_total",
            "Candidate model versions the publish gate refused (clearly worse than the published "
            "one on held-back demonstrations); the fleet kept the published one", registry=r,
        )
        self.publish_gate_loss = Gauge(
            "streamcascade_publish_gate_loss",
            "The last candidate version's net loss of accuracy against the published one on the "
            "held-back demonstrations of each source (negative: it was better)", ["source"],
            registry=r,
        )
        self.record_key_mismatches = Counter(
            "streamcascade_record_key_mismatches_total",
            "Records whose Kafka key is not their event id (their feedback may miss them: "
            "feedback is co-partitioned by id)", ["topic"], registry=r,
        )
        self.degraded = Counter(
            "streamcascade_degraded_total",
            "Events the LLM could not answer that an earlier stage answered (on_llm_failure = "
            "degrade), by that stage", ["stage"], registry=r,
        )
        self._llm_watched = False
        # Registered now, so that the families exist (empty) before a model reports training.
        self._training = _TrainingCollector()
        r.register(self._training)
        # No data is not a zero: the rolling figures read NaN until they have some.
        self.quality.set(float("nan"))
        self.llm_share.set(float("nan"))
        # Rolling windows, kept with running counts so that a batch costs O(batch), not O(window).
        self._answered_at: deque[int] = deque()
        self._exits = [0] * len(self.stages)  # events of the window answered at each stage
        self._correct: deque[bool] = deque()
        self._n_correct = 0
        self._latency_of = {name: self.latency.labels(name) for name in self.stages}
        self._cost_of = {name: self.cost.labels(name) for name in self.stages}

    def observe_batch(self, decisions: Sequence[Decision], latencies_s: Sequence[float]) -> None:
        """Count one micro-batch of answered events."""
        n_stages = len(self.stages)
        answered = [0] * n_stages
        cost = [0.0] * n_stages
        for decision, latency in zip(decisions, latencies_s, strict=True):
            idx = min(max(decision.stage_index, 0), n_stages - 1)
            answered[idx] += 1
            if decision.degraded:
                self.degraded.labels(decision.stage).inc()
            self._answered_at.append(idx)
            self._exits[idx] += 1
            if len(self._answered_at) > self.window:
                self._exits[self._answered_at.popleft()] -= 1
            self._latency_of[self.stages[idx]].observe(latency)
            cost[idx] += decision.cost
        reached = len(decisions)
        for j, name in enumerate(self.stages):
            if reached:
                self.stage_in.labels(name).inc(reached)
            if answered[j]:
                self.stage_out.labels(name).inc(answered[j])
                self._cost_of[name].inc(cost[j])
            reached -= answered[j]
        if decisions:
            self._update_rolling()

    def observe_llm_calls(self, decisions: Sequence[Decision]) -> None:
        """Count the LLM calls of a batch's decisions, answered or not (a failed call costs a
        call too, and an outage must show as calls, not as a falling LLM share alone)."""
        asked = (self.stages[-1], f"{self.stages[-1]}:audit")  # a call's last step on a path
        calls = sum(1 for d in decisions if d.path and d.path[-1] in asked)
        if calls:
            self.llm_calls.inc(calls)

    def _update_rolling(self) -> None:
        reach = len(self._answered_at)
        for j, name in enumerate(self.stages[:-1]):
            passed = reach - self._exits[j]
            self.deferral_rate.labels(name).set(passed / reach if reach else 0.0)
            reach = passed
        self.llm_share.set(self._exits[-1] / max(len(self._answered_at), 1))

    def observe_ground_truth(self, predicted: int | None, label: int) -> None:
        """Score an answer against ground truth that arrived on the feedback topic."""
        correct = predicted == label
        self._correct.append(correct)
        self._n_correct += correct
        if len(self._correct) > self.window:
            self._n_correct -= self._correct.popleft()
        self.quality.set(self._n_correct / len(self._correct))

    def watch_llm(self, source: ReportsHealth) -> None:
        """Publish ``source``'s health report (a live LLM's, or a model's that has one) as
        metrics, read at each scrape; once per registry."""
        if not self._llm_watched:
            self.registry.register(_LLMHealthCollector(source))
            self._llm_watched = True

    def watch_training(self, source: ReportsTraining) -> None:
        """Publish how ``source``'s background training keeps up (backlog, demonstrations
        dropped, per stage), read at each scrape."""
        self._training.source = source

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)


class _LLMHealthCollector(Collector):
    """A live LLM's health report as metrics, read when they are scraped (the client keeps the
    running totals; copying them on every batch would cost the hot path for nothing)."""

    def __init__(self, source: ReportsHealth) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        health = self._source.health()
        if not health:  # a backend that cannot fail that way (recorded answers)
            return
        state = GaugeMetricFamily(
            "streamcascade_llm_breaker_state",
            "1 for the LLM circuit breaker's state (closed: calls go out; open: refused; "
            "half_open: a trial call)", labels=["state"])
        for name in _BREAKER_STATES:
            state.add_metric([name], 1.0 if health.get("breaker_state") == name else 0.0)
        yield state
        for key, name, doc in _LLM_COUNTERS:
            yield CounterMetricFamily(name, doc, value=float(health.get(key) or 0))
        p95 = health.get("latency_p95_s")
        yield GaugeMetricFamily(
            "streamcascade_llm_latency_p95_seconds",
            "95th percentile of the LLM's recent answer latencies: a request out longer gets a "
            "hedge (NaN until enough answers are seen)",
            value=float("nan") if p95 is None else float(p95))


class _TrainingCollector(Collector):
    """The backlog and dropped demonstrations of stages that train in the background, read when
    scraped (the stages keep the counts; nothing is copied on the hot path)."""

    def __init__(self) -> None:
        self.source: ReportsTraining | None = None

    def collect(self) -> Iterator[Metric]:
        report = self.source.training_report() if self.source is not None else {}
        backlog = GaugeMetricFamily(
            "streamcascade_training_backlog",
            "Demonstrations waiting for a stage's background training (fine-tuning)",
            labels=["stage"])
        dropped = CounterMetricFamily(
            "streamcascade_training_dropped",
            "Demonstrations a stage's background training dropped because it fell behind the "
            "stream (the oldest waiting beyond its max_backlog; a WARNING says when)",
            labels=["stage"])
        for stage, figures in report.items():
            backlog.add_metric([stage], float(figures[BACKLOG]))
            dropped.add_metric([stage], float(figures[DROPPED]))
        yield backlog
        yield dropped
