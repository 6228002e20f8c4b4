"""The operating-point controller's solve: the one-stage fast path agrees with the general one."""

from __future__ import annotations

import numpy as np
import pytest

from streamcascade.models.controller import OperatingPointController
from streamcascade.models.policy import DeferralPolicy
from streamcascade.models.referee import Referee


@pytest.mark.parametrize("mode,value", [("quality_loss", 0.02), ("quality_loss", 0.3),
                                        ("llm_share", 0.4), ("llm_share", 0.05)])
@pytest.mark.parametrize("seed", range(4))
def test_one_stage_solve_matches_the_general_solve(mode: str, value: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    controller = OperatingPointController([DeferralPolicy(2)], [Referee(2)], mode, value, [1.0],
                                          audit_rate=0.01)
    # Expected losses of recent events, some negative (the stage likelier right than the LLM)
    # and some missing (the stage did not run).
    e = rng.normal(0.05, 0.2, size=(800, 1))
    e[rng.random(800) < 0.1] = np.nan
    finite = e[np.isfinite(e)]
    candidates = np.unique(np.concatenate([[-1e9], np.quantile(finite, np.linspace(0, 1, 201))]))
    fast = controller._solve_one(e[:, 0], candidates)
    general = controller._solve_stages(e, candidates)
    assert fast == general
    if mode == "quality_loss":  # the threshold keeps the expected loss within the target
        answered = np.nan_to_num(e[:, 0], nan=np.inf) <= fast
        assert np.nansum(np.where(answered, e[:, 0], 0.0)) / len(e) <= value
