"""``streamcascade worker --program`` on the real broker: a fleet of two serves a two-module
program, every answer names the backend of each module and its cost, ground truth teaches the
policies from both workers' answers, and after a ``kill -9`` the survivor goes on from the
published policies."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from operator_harness import OperatorRun, rows

from streamcascade.benchkit.stream_io import TopicReader
from streamcascade.models.state import unpack_state
from streamcascade.operators.state_store import StateSigner

PROGRAM = ("--program", "hate_gate", "--budget", "500", "--warmup", "20")
BACKENDS = {"gate": {"hashed", "gpt-3.5-turbo-1106"}, "hate": {"hashed", "gpt-3.5-turbo-1106"}}


def newest_state(run: OperatorRun) -> dict[str, Any]:
    """The metadata of the newest signed program state on the state topic ({} if none)."""
    reader = TopicReader(run.bootstrap, [run.topics["state-topic"]])
    signer = StateSigner(run.key)
    newest: dict[str, Any] = {}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for record in reader.poll(timeout=0.3):
            meta, _ = unpack_state(signer.verify(record.value).payload)
            if meta.get("version", -1) >= newest.get("version", -1):
                newest = meta
    reader.close()
    return newest


def each_worker_answers_one_partition(run: OperatorRun) -> bool:
    logs = [p.read_text(errors="replace") for p in sorted(run.tmp_path.glob("worker-*.log"))]
    last = [re.findall(r"answering \S+ (?:partition|partitions) (\[[\d, ]*\])", text)
            for text in logs]
    return len(last) == 2 and all(found and found[-1] in ("[0]", "[1]") for found in last) \
        and last[0][-1] != last[1][-1]


def test_a_program_fleet_from_the_cli_learns_from_every_worker_and_survives_kill_9(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    stream = rows(700)
    first, second = stream[:450], stream[450:]
    truth = {r.id: r.label or "" for r in stream}
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, worker_args=PROGRAM)
    labelled: set[str] = set()

    def label_answered() -> None:
        new = [i for i in run.outputs if i not in labelled]
        labelled.update(new)
        run.send_feedback([(i, truth[i]) for i in new])

    def state_with(n_learned: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (state := newest_state(run)).get("n_learned", 0) < n_learned:
            assert time.monotonic() < deadline, (state.get("n_learned"), run.logs())
            run.poll()
            label_answered()
        return state

    try:
        run.start_worker()
        run.start_worker()
        run.wait_ready()
        deadline = time.monotonic() + 30
        while not each_worker_answers_one_partition(run):
            assert time.monotonic() < deadline, run.logs()
            time.sleep(0.3)
        run.produce(run.event_records(first), rate=500)
        assert run.wait_answered({r.id for r in first}, timeout=40, during=label_answered), \
            run.logs()
        labelled_first = len(labelled)
        before = state_with(int(0.95 * labelled_first), timeout=20)
        # Both workers answered (and joined ground truth); one learned. Every ground truth the
        # learner took rewarded the policies, whoever answered its event.
        joined = [run.metric(w, "streamcascade_feedback_total", 'source="ground_truth"')
                  for w in (0, 1)]
        assert min(joined) > 0.2 * labelled_first, joined
        assert before["n_rewarded"] >= 0.95 * before["n_learned"], before
        updates_before = {site: n for site, _, n in before["sites"]}
        assert set(updates_before) and min(updates_before.values()) > 0, before["sites"]

        run.kill_hard(run.workers[0])  # type: ignore[arg-type]
        run.produce(run.event_records(second))
        assert run.wait_answered({r.id for r in stream}, timeout=60, during=label_answered), \
            run.logs()
        after = state_with(before["n_learned"] + int(0.9 * (len(labelled) - labelled_first)),
                           timeout=30)
    finally:
        run.stop_all()
    # The survivor went on from the published policies: nothing it learned before was lost.
    assert after["version"] > before["version"]
    assert after["n_rewarded"] >= before["n_rewarded"] + 0.9 * (after["n_learned"]
                                                                 - before["n_learned"])
    updates_after = {site: n for site, _, n in after["sites"]}
    assert all(updates_after[site] >= n for site, n in updates_before.items())
    # Every answer names the backend of each module it called, from the program's own, and
    # what it cost (the gate's stage is the policy's feature: every event pays for it).
    outputs = [run.last_output(r.id) for r in stream if r.id in run.outputs]
    assert len(outputs) > 0.95 * len(stream)
    for output in outputs:
        chosen = output["backends"]
        assert "gate" in chosen and set(chosen) <= set(BACKENDS), output
        assert all(chosen[m] in BACKENDS[m] for m in chosen), output
        assert output["cost"] > 0
    assert any("hate" in o["backends"] for o in outputs)
    assert any("gpt-3.5-turbo-1106" in o["backends"].values() for o in outputs)
    assert any(o["cost"] >= 1000 for o in outputs) and any(o["cost"] < 1 for o in outputs)
