"""Two workers in one consumer group share the input's partitions and serve one model state."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from operator_harness import OperatorRun, json_id, rows


def test_two_workers_share_partitions_and_serve_one_model_state(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    n = 1200
    everything = rows(n + 400)
    stream, warm = everything[:n], everything[n:]
    truth = {r.id: r.label or "" for r in stream}
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, partitions=4,
                      worker_args=("--warmup", "100", "--decision-ttl", "8"))
    try:
        run.start_worker()
        run.start_worker()
        # Both members must have joined before the stream starts (metrics served = started).
        deadline = time.monotonic() + 60
        while min(run.metric(w, "streamcascade_model_version") for w in (0, 1)) < 0:
            assert time.monotonic() < deadline, run.logs()
            time.sleep(0.5)
        # Unlabelled events first, until both workers answer some: the group has settled into
        # its two-member assignment. (A worker's decision log is its own: feedback for an event
        # answered before a rebalance moved its partition would not find it.)
        sent_warm = 0
        while min(run.metric(w, "streamcascade_events_in_total") for w in (0, 1)) <= 0:
            assert sent_warm < len(warm), run.logs()
            run.produce(run.event_records(warm[sent_warm : sent_warm + 10]))
            sent_warm += 10
            run.poll()
            time.sleep(0.5)
        labelled: set[str] = set()

        def label_some() -> None:
            new = [i for i in run.outputs if i in truth and i not in labelled and int(i) % 4 == 0]
            labelled.update(new)
            run.send_feedback([(i, truth[i]) for i in new])

        run.produce(run.event_records(stream), rate=300)
        assert run.wait_answered({r.id for r in stream}, timeout=90, during=label_some), run.logs()
        # Every ground-truth label found its event on the worker that answered it (the feedback
        # topic is co-partitioned with the input), so all of them were joined.
        deadline = time.monotonic() + 30
        while sum(run.metric(w, "streamcascade_feedback_total", 'source="ground_truth"')
                  for w in (0, 1)) < len(labelled):
            run.poll()
            assert time.monotonic() < deadline, (
                len(labelled), [run.metric(w, "streamcascade_feedback_total",
                                           'source="ground_truth"') for w in (0, 1)],
                [d["reason"] for d in run.dead][:20])
            time.sleep(0.5)
        joined = [run.metric(w, "streamcascade_feedback_total", 'source="ground_truth"')
                  for w in (0, 1)]
        events_in = [run.metric(w, "streamcascade_events_in_total") for w in (0, 1)]
        published = [run.metric(w, "streamcascade_states_published_total") for w in (0, 1)]
        # Wait for the last state to reach both workers.
        deadline = time.monotonic() + 30
        while True:
            served = [run.metric(w, "streamcascade_model_version") for w in (0, 1)]
            if served[0] == served[1] and served[0] >= max(run.state_versions()):
                break
            assert time.monotonic() < deadline, (served, run.state_versions())
            time.sleep(1)
    finally:
        run.stop_all()
    # The partitions were shared: both workers read events, together at least all of them.
    assert min(events_in) > 0 and sum(events_in) >= n + sent_warm, events_in
    assert min(joined) > 0 and sum(joined) >= len(labelled) > 0, joined
    # One learner (the holder of the demonstrations partition) published; both serve its state.
    assert sorted(p > 0 for p in published) == [False, True], published
    assert served[0] == served[1] > 0
    versions = run.state_versions()
    assert versions == sorted(versions)
    # Answers from both workers carry the learner's versions.
    assert max(run.last_output(i)["model_version"] for i in run.outputs) > 0


def test_feedback_waiting_when_a_worker_joins_is_joined_once_by_its_new_owner(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Feedback that waits un-acked for its event when a rebalance moves its partition is read
    again by the partition's next owner. The worker that read it first forgets it: no
    ``feedback_unmatched`` dead letter for it when its time-to-live passes, and no second join
    where a worker keeps the partition and reads its feedback again."""
    ttl = 15.0
    everything = rows(700)
    stream, warm = everything[:200], everything[200:]
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, partitions=4,
                      worker_args=("--warmup", "50", "--decision-ttl", str(ttl)))
    sent_warm = 0

    def settle(worker: int) -> None:
        """Unlabelled events until ``worker`` answers some: it reads its partitions."""
        nonlocal sent_warm
        while run.metric(worker, "streamcascade_events_in_total") <= 0:
            assert sent_warm < len(warm), run.logs()
            run.produce(run.event_records(warm[sent_warm : sent_warm + 10]))
            sent_warm += 10
            run.poll()
            time.sleep(0.5)

    try:
        run.start_worker()
        run.wait_ready()
        settle(0)
        # Ground truth for events not produced yet: it waits at the only worker.
        run.send_feedback([(r.id, r.label or "") for r in stream])
        deadline = time.monotonic() + 30
        while run.metric(0, "streamcascade_acks_held", 'stream="feedback"') < len(stream):
            assert time.monotonic() < deadline, run.logs()
            time.sleep(0.3)
        run.start_worker()
        run.wait_ready()
        settle(1)
        run.produce(run.event_records(stream))
        assert run.wait_answered({r.id for r in stream}, timeout=60), run.logs()
        # Past the time-to-live of the feedback the first worker read before the rebalance.
        deadline = time.monotonic() + ttl + 5
        while time.monotonic() < deadline:
            run.poll()
            time.sleep(0.5)
        joined = [run.metric(w, "streamcascade_feedback_total", 'source="ground_truth"')
                  for w in (0, 1)]
    finally:
        run.stop_all()
    # (The LLM's answers for the warm-up events that the first worker published, joined, and had
    # not yet committed come back to the new owner, which never saw their events: those do
    # expire into dead letters, duplicates of what was learned.)
    ids = {r.id for r in stream}
    unmatched = [d for d in run.dead
                 if d["reason"] == "feedback_unmatched" and json_id(d) in ids]
    assert unmatched == [], (len(unmatched), joined)
    # Each label joined its event exactly once, on the worker that answered it.
    assert sum(joined) == len(stream) and min(joined) > 0, joined
