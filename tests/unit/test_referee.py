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


def test_a_few_lucky_audits_do_not_credit_a_sure_band() -> None:
    """Unsure disagreements won 4 times in 10; then three audited sure ones (importance weight
    10 each) all won. The sure band moves toward certain, but a few heavy judgements are not
    yet the band's record (with 10 pseudo-observations it was credited 0.85)."""
    referee = Referee(n_classes=2, prior=1.0)
    unsure, sure = np.full(400, 0.6), np.full(3, 0.99)
    referee.learn(np.zeros(400, int), np.arange(400) % 10 < 4, top=unsure)
    referee.learn(np.zeros(3, int), np.ones(3, bool), np.full(3, 10.0), top=sure)
    low, high = referee.stage_right_proba(np.array([0, 0]), np.array([0.6, 0.99]))
    assert low == pytest.approx(0.4, abs=0.02)
    assert low + 0.1 < high < 0.75


def test_state_round_trips_and_bad_counts_are_refused() -> None:
    referee = Referee(n_classes=2)
    referee.learn(np.array([0, 0, 1]), np.array([True, False, False]), np.array([1.0, 2.0, 1.0]),
                  top=np.array([0.99, 0.6, 0.8]))
    copy = Referee(n_classes=2)
    copy.load_arrays({k: v.copy() for k, v in referee.arrays().items()}, referee.n_updates)
    probe = np.array([0, 0, 1]), np.array([0.99, 0.6, 0.8])
    assert copy.stage_right_proba(*probe).tolist() == referee.stage_right_proba(*probe).tolist()
    assert len(set(copy.stage_right_proba(*probe).tolist())) == 3
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


def test_sure_answers_are_credited_more_than_unsure_ones() -> None:
    """The HateSpeech pattern within a class: the stage wins few of its unsure disagreements
    and most of its sure ones, and the referee tells them apart."""
    rng = np.random.default_rng(2)
    referee = Referee(n_classes=2)
    top = np.repeat([0.6, 0.99], 1000)
    right = np.concatenate([rng.random(1000) < 0.4, rng.random(1000) < 0.85])
    order = rng.permutation(2000)
    referee.learn(np.zeros(2000, dtype=int)[order], right[order], top=top[order])
    unsure, sure = referee.stage_right_proba(np.array([0, 0]), np.array([0.6, 0.99]))
    assert 0.33 < unsure < 0.47
    assert 0.78 < sure < 0.9
    # Without its confidence, an answer gets the class's single rate, between the two.
    assert unsure < referee.stage_right_proba(np.array([0]))[0] < sure


def test_a_bin_without_evidence_says_what_the_less_sure_answers_say() -> None:
    referee = Referee(n_classes=3)
    referee.learn(np.full(300, 2), np.arange(300) % 4 != 0, top=np.full(300, 0.75))
    seen = referee.stage_right_proba(np.array([2]), np.array([0.75]))[0]
    assert 0.7 < seen < 0.76
    assert referee.stage_right_proba(np.array([2]), np.array([0.999]))[0] == pytest.approx(seen)
    # Less sure than any evidence: the class's own, cautious, rate.
    by_class = referee.stage_right_proba(np.array([2]))[0]
    assert referee.stage_right_proba(np.array([2]), np.array([0.4]))[0] == pytest.approx(by_class)


def test_a_state_written_before_the_bins_loads() -> None:
    referee = Referee(n_classes=2)
    referee.learn(np.array([0] * 50), np.array([True] * 40 + [False] * 10), top=np.full(50, 0.97))
    old = {"judged": referee.judged.copy(), "stage_won": referee.stage_won.copy()}
    copy = Referee(n_classes=2)
    copy.load_arrays(old, referee.n_updates)
    probe = np.array([0, 0]), np.array([0.6, 0.97])
    assert copy.stage_right_proba(*probe).tolist() == [copy.stage_right_proba(probe[0])[0]] * 2
    with pytest.raises(ValueError, match="inconsistent"):
        copy.load_arrays({**old, "judged_bins": np.zeros((2, 5)),
                          "stage_won_bins": np.ones((2, 5))}, 0)


def test_estimates_follow_new_evidence_and_loaded_counts() -> None:
    """The bins' estimates are derived once per change of the counts; a change is never missed."""
    referee = Referee(n_classes=2)
    probe = np.array([0]), np.array([0.99])
    assert referee.stage_right_proba(*probe)[0] == 0.0
    referee.learn(np.zeros(100, dtype=int), np.ones(100, dtype=bool), top=np.full(100, 0.99))
    learned = referee.stage_right_proba(*probe)[0]
    assert learned > 0.8
    referee.load_arrays(Referee(n_classes=2).arrays(), 0)
    assert referee.stage_right_proba(*probe)[0] == 0.0
