"""The worker's live-LLM flags and its choice for events the LLM cannot answer: flags, the
environment and the config file reach the client and the cascade."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from streamcascade.commands.worker import build_cascade_from_flags, build_settings
from streamcascade.errors import ConfigurationError
from streamcascade.models.cascade import Cascade
from streamcascade.models.llm.base import DEFAULT_LLM_FAILURE, LLM_FAILURE_MODES
from streamcascade.models.llm.openai import OpenAIChatLLM
from streamcascade.settings import Settings

NO_POINT = {"mu": None, "target_llm_share": None, "max_quality_loss": None}


def _live(settings: Settings, overrides: dict[str, Any] | None = None) -> Cascade:
    return build_cascade_from_flags("hatespeech", None, None, NO_POINT, None, None, None, None,
                                    "http://127.0.0.1:9/v1", "m", settings, overrides)


def test_the_settings_know_every_mode_and_default_to_a_dead_letter() -> None:
    field = Settings.model_fields["on_llm_failure"]
    assert get_args(field.annotation) == LLM_FAILURE_MODES
    assert Settings().on_llm_failure == DEFAULT_LLM_FAILURE == "dead-letter"


def test_flags_reach_the_live_client_and_the_cascade() -> None:
    settings = build_settings(llm_concurrency=24, llm_timeout_s=1.5, llm_deadline_s=4.0,
                              llm_hedge=False, on_llm_failure="degrade", batch_size=None)
    cascade = _live(settings)
    llm = cascade.llm
    assert isinstance(llm, OpenAIChatLLM)
    assert (llm.concurrency, llm.timeout, llm.deadline, llm.hedge) == (24, 1.5, 4.0, False)
    assert cascade.config.on_llm_failure == "degrade"


def test_the_environment_sets_them_when_no_flag_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCASCADE_ON_LLM_FAILURE", "wait")
    monkeypatch.setenv("STREAMCASCADE_LLM_TIMEOUT_S", "2")
    cascade = _live(build_settings(on_llm_failure=None, llm_timeout_s=None))
    assert cascade.config.on_llm_failure == "wait"
    assert isinstance(cascade.llm, OpenAIChatLLM) and cascade.llm.timeout == 2.0
    assert cascade.llm.deadline == 6.0  # three request timeouts
    cascade = _live(build_settings(on_llm_failure="degrade"))
    assert cascade.config.on_llm_failure == "degrade"


def test_the_mode_has_one_place_in_the_config_file() -> None:
    with pytest.raises(ConfigurationError, match=r"\[worker\]"):
        _live(Settings(), {"on_llm_failure": "degrade"})


def test_a_recorded_llm_takes_no_client_options() -> None:
    records = Path(__file__).parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"
    cascade = build_cascade_from_flags(
        "hatespeech", None, None, NO_POINT, None, None, "gpt-3.5-turbo-1106", str(records), None,
        None, build_settings(llm_timeout_s=0.5, on_llm_failure="degrade"))
    assert not isinstance(cascade.llm, OpenAIChatLLM)
    assert cascade.config.on_llm_failure == "degrade"
