"""The program policy's update, on synthetic programs whose best choices are known."""

from __future__ import annotations

import numpy as np
import pytest
from program_synthetic import (
    LABELS,
    TASK,
    KindStage,
    compiled,
    events,
    gate_program,
    route,
    route_program,
    run_stream,
    truth_of,
    wrong_of,
)

from streamcascade.models.programs import FunctionBackend, Module, Program
from streamcascade.models.programs.policy import CostController, SitePolicy, Utility


def _share(decisions: list, kind: str, backend: str) -> float:  # type: ignore[type-arg]
    of_kind = [d for d in decisions if d.event_id in kind]
    return sum(f"answer={backend}" in d.path for d in of_kind) / len(of_kind)


def _by_kind(stream: list, decisions: list, kind: str) -> set[str]:  # type: ignore[type-arg]
    ids = {e.id for e, _ in stream if e.text.startswith(kind)}
    return {d.event_id for d in decisions if d.event_id in ids}


def test_one_site_learns_the_best_backend_per_context_at_a_fixed_price() -> None:
    # At a price of 0.2 per dearest cost: on kind a both are right and cheap is cheaper; on
    # kind b only dear is right (1 - 0.2 beats 0).
    stream = events(4000, seed=1)
    model = compiled(route_program(), cost_weight=0.2, warmup=100, seed=3)
    decisions = run_stream(model, stream)
    late = decisions[-1000:]
    a, b = _by_kind(stream, late, "a"), _by_kind(stream, late, "b")
    assert _share(late, a, "dear") < 0.1
    assert _share(late, b, "dear") > 0.9
    truth = {e.id: y for e, y in stream}
    assert np.mean([d.label_index == truth[d.event_id] for d in late]) > 0.9


def test_without_a_price_of_cost_the_better_backend_wins() -> None:
    stream = events(3000, seed=2)
    model = compiled(route_program(), cost_weight=0.0, warmup=100, seed=4)
    late = run_stream(model, stream)[-1000:]
    b = _by_kind(stream, late, "b")
    assert _share(late, b, "dear") > 0.9


def test_a_budget_is_held_and_spent_where_it_buys_quality() -> None:
    # The best choices cost 0.5 * 1 + 0.5 * 100 = 50.5 per event; a budget of 55 leaves little
    # room for anything else, and the realised cost per event must meet it.
    stream = events(6000, seed=5)
    model = compiled(route_program(), budget=55.0, warmup=100, seed=6)
    decisions = run_stream(model, stream)
    late = decisions[-2000:]
    for lo in (0, 1000):
        window = np.mean([d.cost for d in late[lo:lo + 1000]])
        assert abs(window - 55.0) / 55.0 < 0.1, window
    a, b = _by_kind(stream, late, "a"), _by_kind(stream, late, "b")
    assert _share(late, b, "dear") > 0.85
    assert _share(late, a, "dear") < 0.2


def test_a_tighter_budget_is_spent_on_the_events_that_need_it() -> None:
    # 30 per event cannot buy dear for every b event: what it buys must go to kind b.
    stream = events(6000, seed=7)
    model = compiled(route_program(), budget=30.0, warmup=100, seed=8)
    late = run_stream(model, stream)[-2000:]
    assert abs(np.mean([d.cost for d in late]) - 30.0) / 30.0 < 0.1
    a, b = _by_kind(stream, late, "a"), _by_kind(stream, late, "b")
    assert _share(late, b, "dear") > 3 * _share(late, a, "dear")


def test_two_sites_learn_together_from_the_final_answer_only() -> None:
    # seer-then-dear (cost 2 + 10 on half the events, always right) beats blind-then-dear (10)
    # and any guess (half right) at this price; nothing tells the gate its own labels.
    stream = events(4000, seed=9, kinds="a")
    model = compiled(gate_program(), cost_weight=0.3, warmup=100, seed=10)
    decisions = run_stream(model, stream)
    late = decisions[-800:]
    assert np.mean(["gate=seer" in d.path for d in late]) > 0.8
    final_calls = [d for d in late if any(p.startswith("final=") for p in d.path)]
    assert np.mean(["final=dear" in d.path for d in final_calls]) > 0.8
    truth = {e.id: y for e, y in stream}
    assert np.mean([d.label_index == truth[d.event_id] for d in late]) > 0.85
    assert len(model.policies) == 2


def test_warm_up_moves_only_the_baseline() -> None:
    stream = events(80, seed=11)
    model = compiled(route_program(), cost_weight=0.2, warmup=1000, seed=12)
    run_stream(model, stream)
    (policy,) = model.policies.values()
    assert model.warming_up
    assert not policy.theta.any() and policy.n_updates == 0
    assert policy.value.any()


def test_the_update_settles_at_the_return_difference() -> None:
    # With the entropy bonus the fixed point is theta_a . x = E[R | a] + lambda * c_a (up to
    # a constant): the logit gap of two arms is their return gap, whatever the temperature.
    rng = np.random.default_rng(0)
    policy = SitePolicy(np.array([0.0, 0.0]), n_features=1)
    x = np.array([1.0])
    means = np.array([0.3, 0.5])
    gaps = []
    for i in range(20000):
        arm, p = policy.choose(x, 0.0, 0.1, 0.0, 0.0, rng)
        ret = float(rng.random() < means[arm])
        policy.update(x, arm, p, ret, temperature=0.1, learning_rate=0.05, learning_decay=200,
                      baseline_rate=0.05)
        if i >= 10000:
            gaps.append(float(policy.theta[1, 0] - policy.theta[0, 0]))
    assert np.mean(gaps) == pytest.approx(0.2, abs=0.03)


def test_a_price_change_moves_the_choice_without_relearning() -> None:
    policy = SitePolicy(np.array([0.0, 1.0]), n_features=1)
    policy.theta[:, 0] = [0.3, 0.5]  # the dear arm is worth 0.2 more
    x = np.array([1.0])
    assert policy.probabilities(x, 0.1, 0.05)[1] > 0.8  # a price of 0.1 < 0.2: dear
    assert policy.probabilities(x, 0.3, 0.05)[1] < 0.2  # a price of 0.3 > 0.2: cheap


def test_thompson_sampling_explores_where_evidence_is_thin() -> None:
    rng = np.random.default_rng(1)
    policy = SitePolicy(np.array([0.0, 0.0]), n_features=1)
    policy.theta[:, 0] = [0.5, 0.3]
    x = np.array([1.0])
    thin = np.mean([policy.choose(x, 0.0, 0.05, 0.3, 0.0, rng)[0] for _ in range(2000)])
    policy.evidence[:] = 1e4
    thick = np.mean([policy.choose(x, 0.0, 0.05, 0.3, 0.0, rng)[0] for _ in range(2000)])
    assert thin > 0.15  # the worse arm still drawn where its weight is uncertain
    assert thick < thin / 3


def test_the_price_of_cost_follows_the_budget() -> None:
    controller = CostController(budget=100.0, reference=1000.0, rate=1.0, start=0.5)
    for _ in range(10):
        controller.observe(300.0)  # overspending raises the price
    assert controller.lam > 0.5
    for _ in range(100):
        controller.observe(0.0)  # underspending lowers it, below 0 to spend the budget...
    assert controller.lam == -1.0  # ... but not without end
    fenced = CostController(budget=100.0, reference=1000.0, rate=1.0, start=0.0, floor=0.0)
    fenced.observe(0.0)
    assert fenced.lam == 0.0
    fixed = CostController(budget=None, reference=1.0, rate=1.0, start=0.2)
    fixed.observe(1e6)
    assert fixed.lam == 0.2


def test_the_f1_reward_is_the_marginal_f1() -> None:
    utility = Utility("f1", positive=1, prior=10.0)  # a running F1 of 0.5
    assert utility(1, 1) == 1.0
    assert utility(1, 0) == pytest.approx(-0.5)
    assert utility(0, 1) == pytest.approx(-0.5)
    assert utility(None, 1) == pytest.approx(-0.5)
    assert utility(0, 0) == 0.0
    for _ in range(50):
        utility.observe(1, 1)  # F1 rises: each error costs more of it
    assert utility(1, 0) < -0.5
    accuracy = Utility("accuracy", positive=None)
    assert (accuracy(2, 2), accuracy(1, 2), accuracy(None, 2)) == (1.0, 0.0, 0.0)


def test_a_cap_is_not_spent_where_spending_would_cost_quality() -> None:
    # Here dear is right only on kind b, cheap only on kind a: the best choices cost 50.5 per
    # event. A cap of 95 leaves the rest unspent; a target of 95 spends it, at a price below
    # zero, on dear calls that are wrong.
    specialists = Module("answer", LABELS, [
        FunctionBackend("cheap", lambda t: truth_of(t) if t.startswith("a") else wrong_of(t),
                        cost=1.0),
        FunctionBackend("dear", lambda t: truth_of(t) if t.startswith("b") else wrong_of(t),
                        cost=100.0),
    ])
    stream = events(5000, seed=13)
    truth = {e.id: y for e, y in stream}
    cost: dict[str, float] = {}
    right: dict[str, float] = {}
    price: dict[str, float] = {}
    for mode in ("cap", "target"):
        program = Program("specialists", TASK, [specialists], route, [KindStage()])
        model = compiled(program, budget=95.0, budget_mode=mode, warmup=100, seed=14)
        late = run_stream(model, stream)[-1500:]
        cost[mode] = float(np.mean([d.cost for d in late]))
        right[mode] = float(np.mean([d.label_index == truth[d.event_id] for d in late]))
        price[mode] = model.controller.lam
    assert cost["cap"] < 65.0 and right["cap"] > 0.9 and price["cap"] == 0.0
    assert abs(cost["target"] - 95.0) / 95.0 < 0.1 and price["target"] < 0.0
    assert right["target"] < right["cap"]
