"""Prometheus metrics of one worker, in a registry of its own, served over HTTP on request.

Counters and histograms are updated once per micro-batch where they can be (the hot path stays
lean); the rolling figures (deferral rate per stage, quality on feedback) are gauges computed over
a window of recent events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamcascade.models.types import Decision
from streamcascade.operators import dead_letters as dl

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


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
        window: int = 1000,
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
            "(each logged), or one read again after a rebalance and learned already",
            ["reason"], registry=r,
        )
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

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
