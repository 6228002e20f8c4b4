"""The demo picks the stage list that keeps up with its stream here, and its report names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcascade import demo
from streamcascade.models.datasets import StreamRow
from streamcascade.models.stages.onnx_encoder import CPU, CUDA
from streamcascade.models.tasks import TASKS


def _providers(monkeypatch: pytest.MonkeyPatch, providers: list[str]) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)


def test_on_a_cpu_the_hashed_stage_runs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    _providers(monkeypatch, [CPU])
    stages, why = demo.choose_stages()
    assert stages == "hashed" and "CPU" in why


def test_with_a_gpu_the_exported_encoder_joins(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    _providers(monkeypatch, [CUDA, CPU])
    monkeypatch.setenv("STREAMCASCADE_CACHE_DIR", str(tmp_path))
    assert demo.choose_stages()[0] == "hashed"  # not exported here
    (tmp_path / "onnx" / "minilm-l6").mkdir(parents=True)
    (tmp_path / "onnx" / "minilm-l6" / "manifest.json").write_text("{}")
    assert demo.choose_stages() == ("hashed,onnx",
                                    "ONNX Runtime has a GPU and the encoder is exported")


def test_the_report_names_the_stages_it_used() -> None:
    task = TASKS["hatespeech"]
    rows = [StreamRow(str(i), f"text {i}", label, {demo.LLM: label})
            for i, label in enumerate(["hate", "noHate", "noHate"])]
    outputs = {r.id: {"label": r.label, "stage": "hashed" if i else demo.LLM, "cost": 1.0,
                      "model_version": 3} for i, r in enumerate(rows)}
    result = {"outputs": outputs, "dead": {}, "labels_sent": 1, "elapsed_s": 2.0}
    report = demo.build_report(rows, task, result, "hashed", "on a CPU the encoder is slow")
    assert report["stages"] == "hashed"
    text = demo.format_report(report)
    assert f"stages: hashed, then {demo.LLM} (on a CPU the encoder is slow)" in text
