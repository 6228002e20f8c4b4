"""A stream with feedback through a real broker: every event answered, the LLM share falls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from operator_harness import LLM, OperatorRun, rows


def test_every_event_is_answered_and_the_llm_share_falls(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    n = 1500
    stream = rows(n)
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path,
                      worker_args=("--warmup", "100", "--target-llm-share", "0.3"))
    truth = {r.id: r.label or "" for r in stream}
    labelled: set[str] = set()
    try:
        run.start_worker()
        run.wait_ready()
        run.produce(run.event_records(stream), rate=200)

        def label_some() -> None:
            # A labelling team: ground truth for every fifth answered event.
            new = [i for i in run.outputs if i not in labelled and int(i) % 5 == 0]
            labelled.update(new)
            run.send_feedback([(i, truth[i]) for i in new])

        assert run.wait_answered(set(truth), timeout=90, during=label_some), run.logs()
        learned = run.metric(0, "streamcascade_demonstrations_learned_total")
    finally:
        run.stop_all()
    # Every event has an output, or a dead letter when the recorded LLM gave no usable answer.
    assert set(run.outputs) <= set(truth)
    letters = list(run.dead)
    assert {d["reason"] for d in letters} <= {"llm_failed"}
    assert len(run.outputs) + len(letters) >= n
    assert len(run.outputs) > 0.95 * n
    at_llm = [run.last_output(r.id)["stage"] == LLM for r in stream if r.id in run.outputs]
    third = len(at_llm) // 3
    first, last = sum(at_llm[:third]) / third, sum(at_llm[-third:]) / third
    # Warm-up: no stage answers before 100 demonstrations are learned, and those need 100
    # answered events first (the first third is longer than the warm-up, so its share may dip).
    assert all(at_llm[:100])
    assert last < first - 0.2, (first, last, learned, run.state_versions())
    # Learning reached the served model: later answers carry later model versions.
    versions = [run.last_output(r.id)["model_version"] for r in stream if r.id in run.outputs]
    assert max(versions[-third:]) > max(versions[:50])
