"""Stage costs in the online-cascade paper's units: parameter counts relative to BERT-base (110M).

The paper prices a model by its size, so that cost ratios, not currency, decide when deferring is
worth it: GPT-3.5 is taken as a 130B model (1,182 BERT-bases) and Llama-2-70B as 636. Every price
here can be overridden per stage by configuration (``CascadeConfig.stage_costs``), e.g. with a
per-call price in money when that is what a user wants to steer by.

>>> round(cost_of_parameters(110_000_000), 3)
1.0
>>> llm_cost("gpt-3.5-turbo-1106")
1182.0
"""

from __future__ import annotations

from collections.abc import Mapping

#: BERT-base's parameter count, the unit of cost.
BERT_BASE_PARAMETERS = 110_000_000

#: Known LLM sizes, in the paper's units (parameters / 110M).
LLM_COSTS: dict[str, float] = {
    "gpt-3.5-turbo-1106": 1182.0,  # the paper: 130B parameters
    "gpt-3.5-turbo": 1182.0,
    "llama-2-70b-chat": 636.0,  # 70B / 110M
}

#: What an LLM of unknown size costs: the paper's GPT-3.5 figure.
DEFAULT_LLM_COST = 1182.0


def cost_of_parameters(n_parameters: float) -> float:
    """The cost of a model with ``n_parameters`` parameters, in BERT-base units."""
    return float(n_parameters) / BERT_BASE_PARAMETERS


def llm_cost(name: str, overrides: Mapping[str, float] | None = None) -> float:
    """The price of one answer from the LLM called ``name`` (an override wins)."""
    if overrides and name in overrides:
        return float(overrides[name])
    return LLM_COSTS.get(name, LLM_COSTS.get(name.split("/")[-1].lower(), DEFAULT_LLM_COST))
