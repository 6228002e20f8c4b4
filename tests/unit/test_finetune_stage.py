"""The fine-tuned stage: split export, training thread, snapshots, their state, the replay.

Everything runs on a tiny encoder (:mod:`tiny_encoder`): real export, parity checks, torch
training and ONNX Runtime sessions, in seconds. The runner's pacing is also tested alone, with
plain callables for training and snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cascade_streams import sentiment_stream, write_stream
from tiny_encoder import tiny_split_dir

from streamcascade.errors import ConfigurationError, ModelFileError, ModelStateError
from streamcascade.models.cascade import CascadeConfig, build_cascade
from streamcascade.models.datasets import read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.replay import replay
from streamcascade.models.stages.finetune import FineTunedStage
from streamcascade.models.stages.finetune_runner import SnapshotRunner
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.state import pack_state, unpack_state
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import LabelSet

TOPICS = LabelSet(("sport", "food", "weather"))
_WORDS = {0: ["football", "goal", "striker", "referee"],
          1: ["pancake", "soup", "bread", "garlic"],
          2: ["thunder", "rain", "fog", "storm"]}


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_split_dir(tmp_path_factory)


def make(split_dir: Path, labels: LabelSet = TOPICS, **options: object) -> FineTunedStage:
    # Steps sized for a tiny encoder and streams of tens of demonstrations.
    settings: dict[str, object] = {"threads": 1, "variant": "fp32", "snapshot_every": 10,
                                   "lockstep": True, "learning_rate": 3e-3,
                                   "head_learning_rate": 0.03, "new_per_step": 4,
                                   "train_batch": 8}
    settings.update(options)
    return FineTunedStage(labels, model_dir=split_dir, **settings)  # type: ignore[arg-type]


def topic_stream(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    targets = [int(t) for t in rng.integers(3, size=n)]
    texts = [f"today the {_WORDS[t][int(rng.integers(4))]} was {i}" for i, t in enumerate(targets)]
    return texts, targets


def learn_in_batches(stage: FineTunedStage, texts: list[str], targets: list[int],
                     batch: int = 5) -> None:
    for lo in range(0, len(texts), batch):
        stage.learn(texts[lo:lo + batch], targets[lo:lo + batch])


# -- the split export ----------------------------------------------------------------------------


def test_the_split_halves_make_the_whole_encoder(split_dir: Path) -> None:
    import torch

    from streamcascade.onnx_exports.encoder import load_encoder
    from streamcascade.onnx_exports.manifest import load_manifest
    from streamcascade.onnx_exports.split import split_encoder, tokenize

    manifest = load_manifest(split_dir)
    assert manifest.data["split"] == {"n_top": 1, "n_bottom": 1}
    for kind in manifest.data["files"]:
        manifest.verified_path(kind)
    encoder = load_encoder(Path(manifest.data["source"]["folder"]))
    bottom, top = split_encoder(encoder, 1)
    stage = make(split_dir)
    texts = ["a short one", "a somewhat longer sentence about the weather today"]
    ids, mask = tokenize(stage._tokenizer, texts, 64)
    with torch.inference_mode():
        whole = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        halves = top(bottom(torch.from_numpy(ids), torch.from_numpy(mask)),
                     torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(halves, whole, atol=1e-6)
    # ... and ONNX Runtime through both exported halves (the stage's hidden states are kept in
    # half precision, hence the tolerance).
    np.testing.assert_allclose(stage.embed(texts), whole, atol=2e-3)


def test_a_top_export_that_does_not_reproduce_its_weights_is_refused(split_dir: Path) -> None:
    from streamcascade.onnx_exports.manifest import load_manifest
    from streamcascade.onnx_exports.split import export_top, load_top

    top = load_top(load_manifest(split_dir))
    hidden = np.random.default_rng(0).normal(size=(2, 5, 32)).astype(np.float32)
    mask = np.ones((2, 5), dtype=np.int64)
    exported = export_top(top, hidden, mask, variant="int8")
    assert exported.parity["fp32_max_abs_diff"] <= 1e-4
    assert exported.parity["int8_mean_cosine"] >= 0.98
    with pytest.raises(ModelFileError, match="does not match"):
        export_top(top, hidden, mask, variant="fp32", tolerance=-1.0)
    with pytest.raises(ModelFileError, match="strays"):
        export_top(top, hidden, mask, variant="int8", min_int8_cosine=1.01)


def test_a_folder_that_is_not_a_split_export_is_refused(split_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        make(tmp_path)
    with pytest.raises(ConfigurationError, match="last 1 layer"):
        make(split_dir, train_layers=2)
    assert isinstance(make_stage("finetune", TASKS["imdb"], model_dir=split_dir, threads=1),
                      FineTunedStage)


# -- snapshots -----------------------------------------------------------------------------------


def test_snapshots_come_at_the_cadence(split_dir: Path) -> None:
    stage = make(split_dir)
    texts, targets = topic_stream(45)
    learn_in_batches(stage, texts[:25], targets[:25])
    assert stage.snapshots_published + stage.snapshots_declined == 2
    learn_in_batches(stage, texts[25:], targets[25:])
    assert stage.snapshots_published + stage.snapshots_declined == 4
    assert stage.snapshot.number > 0 and stage.snapshot.covers == 10 * stage.snapshot.number
    assert stage.snapshot.parity["fp32_max_abs_diff"] <= 1e-4
    assert stage.train_seconds > 0


def test_a_fine_tuned_stage_learns_the_stream(split_dir: Path) -> None:
    stage = make(split_dir, snapshot_every=30)
    texts, targets = topic_stream(150)
    base = stage.embed(texts[:6])
    hits = []
    for lo in range(0, len(texts), 5):
        said = stage.predict_proba(texts[lo:lo + 5]).argmax(axis=1)
        hits.extend(said == np.array(targets[lo:lo + 5]))
        stage.learn(texts[lo:lo + 5], targets[lo:lo + 5])
    assert stage.snapshot.number >= 3
    assert np.mean(hits[:30]) < 0.8 and np.mean(hits[-30:]) >= 0.9
    # The snapshot's top answers: the encoder itself has moved, not only the head.
    assert not np.allclose(stage.embed(texts[:6]), base, atol=1e-3)


def test_a_snapshot_that_answered_its_window_worse_is_declined(split_dir: Path) -> None:
    # A trainer that barely moves its head loses to the live head on the window's answers.
    stage = make(split_dir, head_learning_rate=1e-6, learning_rate=1e-6, snapshot_every=30)
    texts, targets = topic_stream(60, seed=6)
    learn_in_batches(stage, texts, targets)
    assert stage.snapshots_declined == 2 and stage.snapshot.number == 0


def test_lockstep_learning_gives_the_same_snapshots_whatever_the_timing(split_dir: Path) -> None:
    texts, targets = topic_stream(30, seed=1)
    states = []
    for pause in (0.0, 0.01):
        stage = make(split_dir)
        for lo in range(0, len(texts), 3):
            stage.learn(texts[lo:lo + 3], targets[lo:lo + 3])
            time.sleep(pause)  # the training thread gets ahead, or not
        states.append(stage.state_bytes())
    assert states[0] == states[1]


def test_a_snapshot_starts_answering_only_between_batches(split_dir: Path) -> None:
    stage = make(split_dir, lockstep=False, snapshot_every=5)
    texts, targets = topic_stream(6, seed=2)
    stage.learn(texts[:5], targets[:5])
    runner = stage._runner
    assert runner is not None
    deadline = time.monotonic() + 60
    while runner.seen < 5 or not runner._ready:  # the snapshot is made, not yet taken
        assert time.monotonic() < deadline, "no snapshot was made"
        time.sleep(0.05)
    before = stage.predict_proba(texts)
    assert stage.snapshot.number == 0
    np.testing.assert_array_equal(stage.predict_proba(texts), before)
    stage.learn(texts[5:], targets[5:])
    assert stage.snapshot.number == 1


def test_the_state_carries_the_snapshot_to_another_worker(split_dir: Path) -> None:
    stage = make(split_dir, variant="int8")
    texts, targets = topic_stream(25, seed=3)
    learn_in_batches(stage, texts, targets)
    assert stage.snapshot.variant == "int8" and stage.snapshot.number > 0
    assert stage.snapshot.parity["int8_mean_cosine"] >= 0.98
    worker = make(split_dir, variant="int8", lockstep=False)
    worker.load_state(stage.state_bytes())
    assert worker.snapshot.number == stage.snapshot.number and worker.n_learned == 25
    # (int8 activations are scaled per batch: the same graph, batched differently)
    np.testing.assert_allclose(worker.predict_proba(texts), stage.predict_proba(texts),
                               atol=1e-3)
    # A worker that takes over learning goes on from the snapshot's weights and the cadence.
    heir = make(split_dir, variant="int8")
    heir.load_state(stage.state_bytes())
    more, more_targets = topic_stream(5, seed=4)
    heir.learn(more, more_targets)
    assert heir._runner is not None and heir._runner.submitted == 30
    assert heir.snapshots_published + heir.snapshots_declined == 1  # snapshot 3, at 30


def _with_graph(state: bytes, graph: bytes, sha256: str | None = None) -> bytes:
    meta, arrays = unpack_state(state)
    arrays["snapshot.onnx"] = np.frombuffer(graph, dtype=np.uint8)
    if sha256 is not None:
        meta["snapshot"]["sha256"] = sha256
    return pack_state(meta, arrays)


def test_an_altered_snapshot_is_refused_and_changes_nothing(split_dir: Path) -> None:
    import hashlib

    stage = make(split_dir)
    texts, targets = topic_stream(20, seed=5)
    learn_in_batches(stage, texts, targets)
    assert stage.snapshot.number > 0
    state = stage.state_bytes()
    graph = bytes(unpack_state(state)[1]["snapshot.onnx"].tobytes())
    worker = make(split_dir, lockstep=False)
    answers = worker.predict_proba(texts)
    altered = bytearray(graph)
    altered[len(altered) // 2] ^= 0xFF
    with pytest.raises(ModelStateError, match="sha256"):
        worker.load_state(_with_graph(state, bytes(altered)))
    garbage = b"not an onnx graph"
    with pytest.raises(ModelStateError, match="cannot load"):
        worker.load_state(_with_graph(state, garbage, hashlib.sha256(garbage).hexdigest()))
    assert worker.snapshot.number == 0
    np.testing.assert_array_equal(worker.predict_proba(texts), answers)


# -- the runner's pacing -------------------------------------------------------------------------


def test_a_lockstep_snapshot_covers_exactly_its_demonstrations() -> None:
    trained: list[int] = []
    runner: SnapshotRunner[int, list[int]] = SnapshotRunner(
        trained.extend, lambda number, covers: list(trained), every=10, lockstep=True, chunk=4)
    runner.submit(list(range(25)))
    assert runner.wait_for(2) == list(range(20))
    assert runner.wait_for(2) is None  # taken already
    runner.close(wait=5)
    assert runner.dropped == 0


def test_a_learner_that_falls_behind_drops_the_oldest_and_keeps_the_cadence(
        caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    trained: list[int] = []

    def slow(batch: list[int]) -> None:
        gate.wait(10)  # training is stuck until the stream has run ahead
        trained.extend(batch)

    runner: SnapshotRunner[int, int] = SnapshotRunner(
        slow, lambda number, covers: number, every=10, max_backlog=5, chunk=2)
    with caplog.at_level(logging.WARNING):
        for i in range(40):
            runner.submit([i])
    assert runner.dropped >= 30
    assert "behind the stream" in caplog.text
    gate.set()
    deadline = time.monotonic() + 10
    while runner.seen < 40:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(trained) + runner.dropped == 40
    assert trained == sorted(trained) and trained[-1] == 39  # the newest were kept
    assert runner.take_ready() == 4
    runner.close(wait=5)


def test_a_failed_snapshot_is_passed_over(caplog: pytest.LogCaptureFixture) -> None:
    def snapshot(number: int, covers: int) -> int:
        if number == 1:
            raise ModelFileError("parity")
        return number

    runner: SnapshotRunner[int, int] = SnapshotRunner(
        lambda batch: None, snapshot, every=3, lockstep=True)
    with caplog.at_level(logging.ERROR):
        runner.submit([0, 1, 2])
        assert runner.wait_for(1) is None
    assert "snapshot 1 failed" in caplog.text and runner.failed == 1
    runner.submit([3, 4, 5])
    assert runner.wait_for(2) == 2
    runner.close(wait=5)


# -- in a cascade --------------------------------------------------------------------------------


def test_a_replay_reports_training_and_snapshots(split_dir: Path, tmp_path: Path) -> None:
    task = TASKS["imdb"]
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(120, hard_share=0.2, seed=7))
    cascade = build_cascade(task, RecordedLLM(path, "oracle", task),
                            CascadeConfig(stages=["hashed", "finetune"], warmup=20),
                            finetune={"model_dir": split_dir, "threads": 1, "lockstep": True,
                                      "snapshot_every": 25, "learning_rate": 3e-3,
                                      "head_learning_rate": 0.03})
    result = replay(read_stream(path), task, cascade, progress=False)
    stats = result["stages"]["finetune"]
    made = stats["snapshots_published"] + stats["snapshots_declined"]
    assert made == stats["n_learned"] // 25 >= 1
    assert stats["train_seconds"] > 0 and stats["demonstrations_dropped"] == 0
