"""``streamcascade worker``'s configuration: flags, a TOML file, stage options."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.commands.worker import build_settings, parse_stage_options
from streamcascade.errors import ConfigurationError


def test_stage_options_parse_as_json_when_they_can() -> None:
    got = parse_stage_options(("onnx.variant=int8", "hashed.n_features=4096", "onnx.x=true"))
    assert got == {"onnx": {"variant": "int8", "x": True}, "hashed": {"n_features": 4096}}
    with pytest.raises(ConfigurationError, match=r"STAGE\.KEY=VALUE"):
        parse_stage_options(("variant=int8",))


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCASCADE_INPUT_TOPIC", "from-env")
    monkeypatch.setenv("STREAMCASCADE_BATCH_SIZE", "7")
    settings = build_settings(input_topic=None, batch_size=50, unrelated="ignored")
    assert (settings.input_topic, settings.batch_size) == ("from-env", 50)


def test_a_config_file_feeds_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMCASCADE_BOOTSTRAP", raising=False)
    config = tmp_path / "worker.toml"
    config.write_text('[worker]\ninput_topic = "x"\n')
    # No cluster is named anywhere: the worker stops before it touches Kafka, and says why.
    result = CliRunner().invoke(cli, ["worker", "--config", str(config)])
    assert result.exit_code != 0
    assert "no Kafka cluster" in result.output
    # A value from the file reaches the settings (and is validated there); a flag wins over it.
    config.write_text("[worker]\nbatch_size = 0\n")
    result = CliRunner().invoke(cli, ["worker", "--config", str(config)])
    assert result.exit_code != 0 and "batch_size" in result.output
    result = CliRunner().invoke(cli, ["worker", "--config", str(config), "--batch-size", "5"])
    assert "no Kafka cluster" in result.output
    config.write_text("[worker\n")
    result = CliRunner().invoke(cli, ["worker", "--config", str(config)])
    assert result.exit_code != 0 and "cannot read config file" in result.output


def test_a_bad_cascade_is_refused_before_any_topic_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker checks everything it can before it creates topics on a user's cluster: here
    the cluster does not exist, and the task's error comes first (at once, not after the
    cluster's 30 s timeout)."""
    import streamcascade.operators.topics as topics

    def no_topics(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("topics were made before the cascade was checked")

    monkeypatch.setattr(topics, "prepare_topics", no_topics)
    result = CliRunner().invoke(cli, ["worker", "--bootstrap", "127.0.0.1:1", "--task", "nope"])
    assert result.exit_code != 0 and "unknown task 'nope'" in result.output


def test_a_bad_setting_in_the_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from streamcascade.cli import main

    monkeypatch.setenv("STREAMCASCADE_BATCH_SIZE", "0")
    monkeypatch.setattr("sys.argv", ["streamcascade", "kafka", "status"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert "setting from the environment is invalid" in capsys.readouterr().err


def test_the_config_file_is_checked_and_flags_win_only_when_given(tmp_path: Path) -> None:
    from streamcascade.commands.worker import build_cascade_from_flags
    from streamcascade.settings import Settings

    config = tmp_path / "worker.toml"
    config.write_text('[worker]\ninput = "comments"\n')  # the flag's name, not the parameter's
    result = CliRunner().invoke(cli, ["worker", "--config", str(config)])
    assert result.exit_code != 0 and "unknown [worker] keys ['input']" in result.output
    assert "input_topic" in result.output
    config.write_text('[cascades]\nstages = ["hashed"]\n')
    result = CliRunner().invoke(cli, ["worker", "--config", str(config)])
    assert result.exit_code != 0 and "unknown tables ['cascades']" in result.output

    records = Path(__file__).parents[2] / "plugin" / "data" / "hatespeech.jsonl.gz"

    def built(overrides: dict[str, object], stages: str | None = None, seed: int | None = None,
              **point: float | None) -> object:
        operating = {"mu": None, "target_llm_share": None, "max_quality_loss": None, **point}
        return build_cascade_from_flags(
            "hatespeech", None, stages, operating, seed, None, "gpt-3.5-turbo-1106",
            str(records), None, None, Settings(), overrides).config

    # The file's [cascade] values stand where no flag is given ...
    config_of = built({"seed": 7, "mu": 0.001})
    assert (config_of.seed, config_of.operating_point()) == (7, ("mu", 0.001))
    # ... and a flag given replaces them, the operating point as a whole.
    config_of = built({"seed": 7, "mu": 0.001}, seed=3, max_quality_loss=0.01)
    assert (config_of.seed, config_of.operating_point()) == (3, ("quality_loss", 0.01))
