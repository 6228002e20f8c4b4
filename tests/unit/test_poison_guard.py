"""The learning budget per source and key pattern, and the watch for forged ground truth."""

from __future__ import annotations

import logging
import math

import pytest

from streamcascade.models.types import Demonstration, Event, LabelSet
from streamcascade.operators.poison_guard import (
    ContradictionWatch,
    LearningBudget,
    Opinion,
    key_pattern,
)

LABELS = LabelSet(("hate", "noHate"))
HATE, NO_HATE = 0, 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def demo(event_id: str, label: int = NO_HATE, source: str = "ground_truth") -> Demonstration:
    return Demonstration(Event(event_id, f"text {event_id}"), label, source)


@pytest.mark.parametrize(("event_id", "pattern"), [
    ("2001", "9"), ("17", "9"), ("user-17", "a-9"), ("3f2a91bc-0042", "a-9"),
    ("spam_0001", "a_9"), ("", ""), ("x" * 100, "a"),
])
def test_key_pattern(event_id: str, pattern: str) -> None:
    assert key_pattern(event_id) == pattern


def usual_window(budget: LearningBudget, start: int = 0) -> None:
    """A window of 100: 60 of the LLM and 40 of ground truth, numeric ids; all admitted."""
    demos = [demo(str(start + i), source="llm") for i in range(60)]
    demos += [demo(str(start + 60 + i)) for i in range(40)]
    assert all(budget.admit(d) for d in demos)


def test_the_first_window_learns_the_mix_unlimited() -> None:
    budget = LearningBudget(window=100, floor=5, growth=2)
    assert budget.limit("source:ground_truth") is None
    assert all(budget.admit(demo(f"x-{i}")) for i in range(100))
    assert budget.limit("source:ground_truth") == 200


def test_a_surge_of_one_source_far_above_its_usual_share_is_cut() -> None:
    budget = LearningBudget(window=100, floor=5, growth=1.5, history=3)
    for w in range(4):
        usual_window(budget, 100 * w)
    # Ground truth alone now: 60 of its 100 in the window (1.5 x its usual 40).
    admitted = sum(budget.admit(demo(str(1000 + i))) for i in range(100))
    assert admitted == 60
    assert budget.limit("source:ground_truth") == 90  # it grows from what was learned
    # A backlog read at full speed is the usual mix: nothing is cut (windows count records).
    for w in range(10):
        usual_window(budget, 2000 + 100 * w)


def test_a_forged_key_pattern_is_limited_apart_from_the_stream() -> None:
    budget = LearningBudget(window=100, floor=10, growth=4)
    for w in range(3):
        usual_window(budget, 100 * w)
    forged = sum(budget.admit(demo(f"poison-{i}")) for i in range(100))
    assert forged == 10  # the pattern 'a-9' has no history: the floor
    # The stream's own ids still pass.
    usual_window(budget, 1000)
    assert budget.limit("pattern:a-9") == 40


def test_quiet_windows_age_the_history() -> None:
    budget = LearningBudget(window=100, floor=5, growth=2, history=2)
    usual_window(budget)
    assert budget.limit("source:ground_truth") == 80
    for _ in range(3):  # three windows of the LLM alone: ground truth's busy window is forgotten
        assert all(budget.admit(demo(str(i), source="llm")) for i in range(100))
    assert budget.limit("source:ground_truth") == 5


def test_budget_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        LearningBudget(window=0)
    with pytest.raises(ValueError):
        LearningBudget(growth=0.5)


def confident(label: int) -> Opinion:
    return Opinion(label, 0.97)


def test_what_contradicts_the_model() -> None:
    watch = ContradictionWatch(LABELS)
    watch.note_llm([demo("1", HATE, "llm"), demo("2", NO_HATE, "llm")])
    # The stages and the LLM both say hate, at high confidence: noHate contradicts them.
    assert watch.contradicts(demo("1", NO_HATE), confident(HATE))
    # The LLM agrees with the ground truth: no contradiction.
    assert not watch.contradicts(demo("2", NO_HATE), confident(HATE))
    # The stages are not sure: no contradiction.
    assert not watch.contradicts(demo("1", NO_HATE), Opinion(HATE, 0.6))
    # The stages agree: none.
    assert not watch.contradicts(demo("1", HATE), confident(HATE))
    # The LLM never saw the event: the stages' confident answer stands alone.
    assert watch.contradicts(demo("3", NO_HATE), confident(HATE))


def run_stream(watch: ContradictionWatch, n: int, every: int, start: int = 0) -> None:
    """``n`` ground-truth labels, one in ``every`` contradicting the model."""
    demos = [demo(str(start + i), NO_HATE if i % every == 0 else HATE) for i in range(n)]
    watch.observe(demos, [confident(HATE)] * n)


def test_the_usual_rate_is_quiet_and_a_burst_warns_with_evidence(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    watch = ContradictionWatch(LABELS, window=100, min_count=10, floor_share=0.15, factor=3,
                               baseline_after=300, clock=clock)
    assert math.isnan(watch.window_share()) and math.isnan(watch.baseline_share())
    with caplog.at_level(logging.WARNING):
        run_stream(watch, 1000, every=10)  # 10%: this stream's usual
    assert not watch.alarmed and not caplog.records
    assert watch.baseline_share() == pytest.approx(0.1)
    # Only a share three times the usual raises the alarm now.
    assert watch.threshold() == pytest.approx(0.3)
    with caplog.at_level(logging.WARNING):
        watch.observe([demo(f"poison-{i}", NO_HATE) for i in range(40)], [confident(HATE)] * 40)
    assert watch.alarmed
    assert watch.contradictions == 100 + 40
    warning = caplog.records[-1].getMessage()
    assert "possible poisoning" in warning
    assert "'a-9' x40" in warning  # the key pattern of the burst
    assert "ground truth 'noHate', LLM not asked, stages 'hate' at 0.97" in warning
    assert "46 of the last 100 ground-truth labels (46%; usual 10.1%, alarm from 30%)" in warning
    # The burst did not teach the watch that it is usual.
    assert watch.baseline_share() == pytest.approx(0.1, abs=0.002)


def test_a_stream_whose_usual_share_is_above_the_floor_is_learned_then_quiet() -> None:
    watch = ContradictionWatch(LABELS, window=100, min_count=10, floor_share=0.2, factor=3,
                               baseline_after=300)
    run_stream(watch, 200, every=4)  # 25%, above the floor
    assert watch.alarmed  # the usual is not known yet
    run_stream(watch, 400, every=4, start=200)
    assert watch.baseline_share() == pytest.approx(0.25)
    assert not watch.alarmed and watch.threshold() == pytest.approx(0.75)


def test_the_warning_repeats_at_most_every_so_often(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    watch = ContradictionWatch(LABELS, window=50, min_count=5, floor_share=0.2,
                               warn_every_s=60, clock=clock)
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            run_stream(watch, 10, every=1, start=10 * i)
            clock.now += 5
        assert len(caplog.records) == 1
        clock.now += 60
        run_stream(watch, 10, every=1, start=500)
        assert len(caplog.records) == 2
    with caplog.at_level(logging.INFO):
        run_stream(watch, 50, every=1000, start=1000)  # back to agreeing
    assert not watch.alarmed
    assert "usual rate again" in caplog.records[-1].getMessage()


def test_other_sources_only_teach_the_llm_labels() -> None:
    watch = ContradictionWatch(LABELS, window=10, min_count=1, floor_share=0.01)
    watch.observe([demo("1", HATE, "llm"), demo("2", HATE, "audit")],
                  [confident(NO_HATE)] * 2)
    assert watch.contradictions == 0 and math.isnan(watch.window_share())
    # The LLM's label of event 1 is now known: it agrees with this ground truth.
    assert watch.observe([demo("1", HATE)], [confident(NO_HATE)]) == 0
