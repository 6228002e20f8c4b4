"""What a fleet relies on from the fine-tuned stage: its gate on snapshots can be switched off
(every snapshot taken at its cadence, as a fleet test needs), and putting back the state it holds
leaves its training running."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_encoder import tiny_split_dir

from streamcascade.models.stages.finetune import FineTunedStage
from streamcascade.models.types import LabelSet

LABELS = LabelSet(("sport", "weather"))


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_split_dir(tmp_path_factory)


@pytest.mark.parametrize("decline_worse", [True, False])
def test_a_worse_snapshot_is_taken_only_when_the_gate_is_off(split_dir: Path,
                                                             decline_worse: bool) -> None:
    # A trainer that barely moves loses to the live head on each window's answers.
    stage = FineTunedStage(LABELS, model_dir=split_dir, threads=1, variant="fp32",
                           snapshot_every=20, lockstep=True, learning_rate=1e-6,
                           head_learning_rate=1e-6, new_per_step=4, train_batch=8,
                           decline_worse=decline_worse)
    rng = np.random.default_rng(0)
    targets = [int(t) for t in rng.integers(2, size=40)]
    texts = [f"the {('goal', 'storm')[t]} came at {i}" for i, t in enumerate(targets)]
    for lo in range(0, len(texts), 5):
        stage.learn(texts[lo:lo + 5], targets[lo:lo + 5])
    stage.close()
    if decline_worse:
        assert stage.snapshots_declined == 2 and stage.snapshot.number == 0
    else:
        assert stage.snapshots_declined == 0 and stage.snapshot.number == 2


def test_loading_the_state_it_holds_leaves_training_running(split_dir: Path) -> None:
    """A cascade puts its own state back after refusing another (an altered snapshot): that
    must not throw away what the trainer learned since the last snapshot."""
    stage = FineTunedStage(LABELS, model_dir=split_dir, threads=1, variant="fp32",
                           snapshot_every=10, lockstep=True, new_per_step=4, train_batch=8,
                           decline_worse=False)
    texts = [f"the {('goal', 'storm')[i % 2]} came at {i}" for i in range(15)]
    targets = [i % 2 for i in range(15)]
    stage.learn(texts, targets)
    runner = stage._runner
    assert runner is not None and stage.snapshot.number == 1
    stage.load_state(stage.state_bytes())
    assert stage._runner is runner
    other = FineTunedStage(LABELS, model_dir=split_dir, threads=1, variant="fp32",
                           snapshot_every=10, lockstep=True)
    other.learn(texts[:3], targets[:3])
    stage.load_state(other.state_bytes())  # another learner's state replaces the trainer
    assert stage._runner is None and stage.n_learned == 3
    other.close()
    runner.close()
