"""The fine-tuned stage served by a fleet: two workers, snapshots swapped, a crash, bad artefacts.

Two workers of one group run ``--stages hashed,finetune`` on a stream with ground truth and the
LLM's answers as feedback. The learner (whichever worker holds the demonstrations partition)
fine-tunes MiniLM's top layers and makes a snapshot every few dozen demonstrations; each travels
inside the model state on the state topic (about 17 MB: far over the clients' and the
broker's default record limit of 1 MB).

Which snapshot a version serves is read from the published states themselves; the outputs carry
the model version that answered them. So: after each snapshot's first state is published, both
workers serve it (their ``model_version``), and answers from both carry it or newer. Records on
the state topic whose snapshot bytes were altered, signed again or not, are refused with a
clear error while both workers keep their versions. After ``kill -9`` of the learner, the other
worker learns on, and a restarted worker answers with the newest state, not the altered one.

A state topic made with the broker's default limit cannot take such a state: the worker says so
at start, and stops at the first state it cannot publish, naming the topic and the setting.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from operator_harness import OperatorRun, rows

from streamcascade.benchkit.stream_io import TopicReader, make_producer
from streamcascade.models.datasets import StreamRow
from streamcascade.models.stages.finetune import DEFAULT_TRAIN_LAYERS
from streamcascade.models.state import compress_state, pack_state, unpack_state
from streamcascade.onnx_exports.split import ensure_split
from streamcascade.operators.options import STATE_MAX_BYTES
from streamcascade.operators.state_store import STATE_KEY, StateSigner

FINETUNE_STAGE = "stage1"  # the cascade's state holds its stages' states in order
# Small and quick: MiniLM's last layers on 32 tokens, a snapshot every 40 demonstrations, every
# snapshot taken (the stage's own gate may decline one; that is not what this test is about).
WORKER_ARGS = (
    "--stages", "hashed,finetune", "--warmup", "30", "--decision-ttl", "60",
    "--publish-interval", "2",
    "--stage-option", "finetune.max_length=32",
    "--stage-option", "finetune.snapshot_every=40",
    "--stage-option", "finetune.train_batch=8",
    "--stage-option", "finetune.new_per_step=8",
    "--stage-option", "finetune.head_learning_rate=0.02",
    "--stage-option", "finetune.learning_rate=0.0001",
    "--stage-option", "finetune.decline_worse=false",
    "--stage-option", "finetune.threads=1",
)


@dataclass(frozen=True)
class PublishedState:
    version: int
    snapshot: int  # the fine-tuned stage's snapshot number in it
    blob: bytes  # the signed record


def finetune_snapshot(payload: bytes) -> int:
    """The snapshot number of the fine-tuned stage inside a cascade's state."""
    _, arrays = unpack_state(payload)
    meta, _ = unpack_state(arrays[FINETUNE_STAGE].tobytes())
    return int(meta["snapshot"]["number"])


class StateTracker:
    """Follows the state topic: every verified state, with its fine-tuned snapshot."""

    def __init__(self, run: OperatorRun) -> None:
        self.reader = TopicReader(run.bootstrap, [run.topics["state-topic"]])
        self.signer = StateSigner(run.key)
        self.states: list[PublishedState] = []
        #: Versions the test wrote itself (altered artefacts), not the fleet's.
        self.ignored: set[int] = set()

    def poll(self) -> list[PublishedState]:
        for record in self.reader.poll(timeout=0.2, max_records=50):
            try:
                verified = self.signer.verify(record.value)
            except Exception:  # the test's own altered records
                continue
            if verified.version in self.ignored | {s.version for s in self.states}:
                continue
            self.states.append(PublishedState(verified.version,
                                              finetune_snapshot(verified.payload),
                                              record.value or b""))
        return self.states

    def close(self) -> None:
        self.reader.close()


def altered_graph(state: PublishedState, key: str, version: int) -> bytes:
    """``state`` with a byte of its snapshot's ONNX graph changed, signed again as ``version``."""
    verified = StateSigner(key).verify(state.blob)
    meta, arrays = unpack_state(verified.payload)
    stage_meta, stage_arrays = unpack_state(arrays[FINETUNE_STAGE].tobytes())
    graph = stage_arrays["snapshot.onnx"].copy()
    graph[len(graph) // 2] ^= 0x55
    stage_arrays["snapshot.onnx"] = graph
    arrays[FINETUNE_STAGE] = np.frombuffer(pack_state(stage_meta, stage_arrays), dtype=np.uint8)
    meta["version"] = version
    payload = compress_state(pack_state(meta, arrays))
    return StateSigner(key).sign(version, payload, verified.meta)


def test_fine_tuned_snapshots_are_served_by_the_fleet_through_a_crash_and_bad_artefacts(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    started = time.monotonic()
    # Exported once into the cache here, not by both workers at once.
    ensure_split("minilm-l6", DEFAULT_TRAIN_LAYERS)
    everything = rows(2000)
    fresh = iter(everything)
    truth = {r.id: r.label or "" for r in everything}
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, partitions=2, worker_args=WORKER_ARGS)
    states = StateTracker(run)
    labelled: set[str] = set()

    def take(n: int) -> list[StreamRow]:
        return [next(fresh) for _ in range(n)]

    def label_answered() -> None:
        new = [i for i in run.outputs if i in truth and i not in labelled]
        labelled.update(new)
        run.send_feedback([(i, truth[i]) for i in new])

    def served(workers: list[int]) -> list[float]:
        return [run.metric(w, "streamcascade_model_version") for w in workers]

    def wait_served(workers: list[int], version: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while min(served(workers)) < version:
            run.poll()
            states.poll()
            assert time.monotonic() < deadline, (served(workers), version, run.logs())
            time.sleep(0.3)

    def probe(workers: list[int], version: int, n: int = 24) -> None:
        """Fresh events answered by every worker in ``workers``, all by ``version`` or newer."""
        before = [run.metric(w, "streamcascade_events_in_total") for w in workers]
        batch = take(n)
        run.produce(run.event_records(batch))
        assert run.wait_answered({r.id for r in batch}, timeout=60), run.logs()
        after = [run.metric(w, "streamcascade_events_in_total") for w in workers]
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
        versions = [run.last_output(r.id)["model_version"] for r in batch if r.id in run.outputs]
        assert versions and min(versions) >= version, (versions, version)

    try:
        run.start_worker()
        run.start_worker()
        run.wait_ready(timeout=180)
        both = [0, 1]
        # Unlabelled events until both workers answer some: the group has its two members.
        while min(run.metric(w, "streamcascade_events_in_total") for w in both) <= 0:
            run.produce(run.event_records(take(10)))
            run.poll()
            time.sleep(0.5)

        # The stream with feedback, paused after each new snapshot's first state to check that
        # both workers swap to it.
        checked: list[int] = []
        deadline = time.monotonic() + 240
        while len(checked) < 2:
            assert time.monotonic() < deadline, ([(s.version, s.snapshot) for s in states.states],
                                                 run.logs())
            run.produce(run.event_records(take(10)))
            run.poll()
            label_answered()
            time.sleep(0.5)
            newest = max(states.poll(), key=lambda s: s.version, default=None)
            if newest is None or newest.snapshot == 0 or newest.snapshot in checked:
                continue
            first = min(s.version for s in states.states if s.snapshot == newest.snapshot)
            wait_served(both, first)
            probe(both, first)
            checked.append(newest.snapshot)
        published = sorted(states.states, key=lambda s: s.version)
        # Versions go up with the snapshots they serve, never back.
        assert [s.snapshot for s in published] == sorted(s.snapshot for s in published)
        assert len(published[-1].blob) > 8 * 2**20  # a real state: over the clients' defaults

        # Quiet: the last state reaches both workers.
        label_answered()
        time.sleep(3)
        newest = max(states.poll(), key=lambda s: s.version)
        wait_served(both, newest.version)
        newest = max(states.poll(), key=lambda s: s.version)
        kept = served(both)

        # Altered artefacts: the graph's bytes changed and the record not signed again, then
        # signed again (with the fleet's key) under a version above every legit one.
        refused = [run.metric(w, "streamcascade_states_refused_total") for w in both]
        flipped = bytearray(newest.blob)
        flipped[len(flipped) // 2] ^= 0x55
        bogus_version = newest.version + 1000
        states.ignored.add(bogus_version)
        writer = make_producer(run.bootstrap, **{"message.max.bytes": STATE_MAX_BYTES})
        for blob in (bytes(flipped), altered_graph(newest, run.key, bogus_version)):
            writer.produce(run.topics["state-topic"], key=STATE_KEY, value=blob)
        assert writer.flush(30) == 0
        deadline = time.monotonic() + 60
        while min(run.metric(w, "streamcascade_states_refused_total") - refused[w]
                  for w in both) < 2:
            assert time.monotonic() < deadline, run.logs()
            time.sleep(0.3)
        logs = run.logs_whole()
        assert "model state signature does not match: refused" in logs
        assert "the ONNX graph does not match its sha256" in logs
        # Neither loaded it: both serve legit versions (the learner may have published more).
        now = served(both)
        assert all(k <= v < bogus_version for v, k in zip(now, kept, strict=True)), (now, kept)
        deadline = time.monotonic() + 30
        while not set(now) <= {s.version for s in states.poll()}:
            assert time.monotonic() < deadline, (now, [s.version for s in states.states])
        probe(both, int(min(kept)))
        assert max(run.last_output(i)["model_version"] for i in run.outputs) < bogus_version

        # kill -9 of the learner; the other worker takes over learning.
        learner = max(both, key=lambda w: run.metric(w, "streamcascade_states_published_total"))
        survivor = 1 - learner
        assert run.metric(learner, "streamcascade_states_published_total") > 0
        run.kill_hard(run.workers[learner])
        deadline = time.monotonic() + 120
        while run.metric(survivor, "streamcascade_states_published_total") <= 0:
            assert time.monotonic() < deadline, run.logs()
            run.produce(run.event_records(take(10)))
            run.poll()
            label_answered()
            time.sleep(0.5)
        # A restarted worker answers with the newest state, not the refused one, from its first
        # event on (the altered record is the newest on the topic).
        newest = max(states.poll(), key=lambda s: s.version)
        restarted = len(run.workers)
        run.start_worker()
        deadline = time.monotonic() + 180
        while not (ready := re.findall(r"ready: serving model version (\d+)",
                                       (tmp_path / f"worker-{restarted}.log").read_text())):
            assert time.monotonic() < deadline, run.logs()
            run.poll()
            time.sleep(0.3)
        assert newest.version <= int(ready[0]) < bogus_version, (ready, run.logs())
        newest = max(states.poll(), key=lambda s: s.version)
        pair = [survivor, restarted]
        wait_served(pair, newest.version)
        assert run.metric(restarted, "streamcascade_model_version") < bogus_version
        probe(pair, newest.version)
        assert newest.snapshot >= max(checked)
    finally:
        states.close()
        run.stop_all()
    print(f"fine-tuned fleet test: {time.monotonic() - started:.0f} s, states "
          f"{[(s.version, s.snapshot) for s in sorted(states.states, key=lambda s: s.version)]}")


def test_a_state_topic_too_small_for_a_fine_tuned_state_is_said_clearly(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A state topic made elsewhere with the broker's default record limit (1 MB) cannot take a
    fine-tuned state: the worker warns at start, and stops at the first state it cannot publish
    saying which topic, how large, and what to raise."""
    ensure_split("minilm-l6", DEFAULT_TRAIN_LAYERS)
    run = OperatorRun(kafka_bootstrap, new_topic, tmp_path, partitions=1, worker_args=WORKER_ARGS)
    run.topics["state-topic"] = new_topic(1, prefix="small-state", **{"cleanup.policy": "compact"})
    stream = rows(600)
    truth = {r.id: r.label or "" for r in stream}
    labelled: set[str] = set()
    try:
        worker = run.start_worker()
        run.wait_ready(timeout=180)
        deadline = time.monotonic() + 120
        for lo in range(0, len(stream), 10):
            if worker.poll() is not None:
                break
            assert time.monotonic() < deadline, run.logs()
            run.produce(run.event_records(stream[lo:lo + 10]))
            run.poll()
            new = [i for i in run.outputs if i not in labelled]
            labelled.update(new)
            run.send_feedback([(i, truth[i]) for i in new])
            time.sleep(0.3)
        worker.wait(60)
    finally:
        run.stop_all()
    logs = run.logs_whole()
    assert worker.returncode != 0, logs
    assert f"model-state topic {run.topics['state-topic']} takes records of at most" in logs
    assert re.search(rf"model-state topic {run.topics['state-topic']} refused a state of "
                     r"\d{7,} bytes", logs), logs[-3000:]
