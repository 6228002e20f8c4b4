"""``streamcascade replay`` paces background training as an operator that keeps up would: the
fine-tuned stage runs in lockstep unless told otherwise, and the JSON says what training cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cascade_streams import sentiment_stream, write_stream
from click.testing import CliRunner
from tiny_encoder import tiny_split_dir

from streamcascade.cli import cli
from streamcascade.models.costs import cost_of_parameters
from streamcascade.models.replay import replay_stage_options
from streamcascade.onnx_exports.manifest import load_manifest

EVERY = 25


def test_replay_options_add_lockstep_only_where_the_user_did_not_choose() -> None:
    assert replay_stage_options(["hashed"], {}) == {}
    assert replay_stage_options(["hashed", "finetune"], {"hashed": {"n_features": 64}}) == {
        "hashed": {"n_features": 64}, "finetune": {"lockstep": True}}
    given = {"finetune": {"lockstep": False, "snapshot_every": 5}}
    assert replay_stage_options(["finetune"], given) == given
    assert given == {"finetune": {"lockstep": False, "snapshot_every": 5}}  # not changed
    # A stage that is not in the cascade gets nothing (its options would be an error).
    assert replay_stage_options(["hashed", "onnx"], {}) == {}


def _replay(tmp_path: Path, split_dir: Path, *flags: str) -> dict[str, object]:
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(120, hard_share=0.2, seed=7))
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, [
        "replay", "--dataset", str(path), "--llm", "oracle", "--stages", "hashed,finetune",
        "--warmup", "20", "--json", str(out),
        "--stage-option", f"finetune.model_dir={split_dir}",
        "--stage-option", "finetune.threads=1",
        "--stage-option", f"finetune.snapshot_every={EVERY}",
        "--stage-option", "finetune.learning_rate=0.003",
        "--stage-option", "finetune.head_learning_rate=0.03", *flags])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(out.read_text())
    return data


def test_a_replay_takes_every_snapshot_at_its_point_and_reports_training(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    split_dir = tiny_split_dir(tmp_path_factory)
    data = _replay(tmp_path, split_dir)
    options = data["stage_options"]
    assert isinstance(options, dict) and options["finetune"]["lockstep"] is True
    stages = data["stages"]
    assert isinstance(stages, dict)
    stats = stages["finetune"]
    # In lockstep every snapshot the stream called for was made (and adopted or declined) by the
    # replay's end, nothing dropped.
    made = stats["snapshots_published"] + stats["snapshots_declined"]
    assert made == stats["n_learned"] // EVERY >= 1
    assert stats["demonstrations_dropped"] == 0 and stats["wait_seconds"] >= 0
    assert data["snapshots_published"] == stats["snapshots_published"]
    assert data["train_seconds"] == stats["train_seconds"] > 0
    # The stage is charged at the encoder's parameters and its head's.
    manifest = load_manifest(split_dir)
    k, inputs = 2, manifest.dimensions["hidden_size"] + 2  # (the head stacks the upstream's)
    assert stats["cost_per_event"] == pytest.approx(
        cost_of_parameters(manifest.dimensions["parameters"] + k * (inputs + 1)))


def test_the_user_may_turn_lockstep_off(tmp_path_factory: pytest.TempPathFactory,
                                        tmp_path: Path) -> None:
    data = _replay(tmp_path, tiny_split_dir(tmp_path_factory),
                   "--stage-option", "finetune.lockstep=false")
    options = data["stage_options"]
    assert isinstance(options, dict) and options["finetune"]["lockstep"] is False


def test_a_replay_without_background_training_says_none(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(60, seed=2))
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["replay", "--dataset", str(path), "--llm", "oracle",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["train_seconds"] is None and data["snapshots_published"] is None
    assert data["stage_options"] == {}
