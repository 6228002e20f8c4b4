"""The referee: who is right when a stage and the LLM disagree, learned from ground truth."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from streamcascade.models import referee as referee_module
from streamcascade.models.controller import OperatingPointController
from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.referee import Referee


def test_the_docstring_example_runs() -> None:
    result = doctest.testmod(referee_module)
    assert result.failed == 0 and result.attempted > 0


def test_it_tells_the_classes_apart() -> None:
    """The HateSpeech pattern: the stage wins its 'no' disagreements and loses its 'yes' ones."""
    rng = np.random.default_rng(1)
    referee = Referee(n_classes=2)
    said = rng.integers(0, 2, size=2000)
    right = np.where(said == 0, rng.random(2000) < 0.7, rng.random(2000) < 0.05)
    referee.learn(said, right)
    q_no, q_yes = referee.stage_right_proba(np.array([0, 1]))
    assert 0.6 < q_no < 0.72
    assert q_yes < 0.08


def test_without_evidence_the_llm_is_trusted() -> None:
    referee = Referee(n_classes=3, prior=20.0)
    assert referee.stage_right_proba(np.array([0, 1, 2])).tolist() == [0.0, 0.0, 0.0]
    referee.learn(np.array([1]), np.array([True]))  # one win proves little
    assert referee.stage_right_proba(np.array([1]))[0] == pytest.approx(1 / 21)


def test_state_round_trips_and_bad_counts_are_refused() -> None:
    referee = Referee(n_classes=2)
    referee.learn(np.array([0, 0, 1]), np.array([True, False, False]), np.array([1.0, 2.0, 1.0]))
    copy = Referee(n_classes=2)
    copy.load_arrays({k: v.copy() for k, v in referee.arrays().items()}, referee.n_updates)
    probe = np.array([0, 1])
    assert copy.stage_right_proba(probe).tolist() == referee.stage_right_proba(probe).tolist()
    with pytest.raises(ValueError, match="shape"):
        copy.load_arrays({"judged": np.zeros(3), "stage_won": np.zeros(3)}, 0)
    with pytest.raises(ValueError, match="inconsistent"):
        copy.load_arrays({"judged": np.zeros(2), "stage_won": np.ones(2)}, 0)


def test_the_controller_credits_only_the_class_the_stage_wins() -> None:
    """Expected loss of an early answer: below the LLM-only bound where the stage wins its
    disagreements, unchanged where it loses them."""
    policy, referee = DeferralPolicy(n_classes=2), Referee(n_classes=2)
    referee.learn(np.array([0] * 500 + [1] * 500),
                  np.array([True] * 400 + [False] * 100 + [False] * 500))
    controller = OperatingPointController([policy], [referee], "quality_loss", 0.01, [1.0])
    no, yes = np.array([[0.8, 0.2]]), np.array([[0.2, 0.8]])
    x = policy.features(np.vstack([no, yes]), np.array([50.0, 50.0]))
    d = policy.defer_proba_of(x)
    e = controller.scores(0, x)
    assert e[0] < 0.5 * d[0]  # 'no': the stage is right on ~4 in 5 of its disagreements
    assert e[1] == pytest.approx(d[1], rel=1e-6)  # 'yes': never right, so no credit
