"""``streamcascade onnx export``: torch to ONNX, parity check, int8 quantisation, manifest.

The export is done into a temporary directory beside the target and moved into place only once
every check has passed, so a failed or interrupted export never leaves a half-written model that
the stage would load. Checks, each a :class:`~streamcascade.errors.ModelFileError` on failure:

1. the torch encoder (:mod:`.encoder`) matches the reference implementation
   (``transformers.BertModel`` + mean pooling, when ``transformers`` is importable: it comes with
   the weight package's ``sentence-transformers`` dependency);
2. the fp32 ONNX model, after the graph optimisation below, matches the torch encoder on real
   sentences, batched and one by one (largest absolute difference of the embeddings at most
   ``tolerance``);
3. the int8 model's embeddings keep a mean cosine similarity to fp32 of at least
   ``min_int8_cosine``.

Graph optimisation, once, at export (not at every session start): ONNX Runtime's transformer
optimiser fuses each layer's Q/K/V projections, scaled dot product, mask and softmax into one
``Attention`` node and the intermediate bias and erf GELU into ``BiasGelu`` (exact, not the tanh
approximation). It is told not to fuse the residual ``Add`` + ``LayerNormalization`` into
``SkipLayerNormalization``, whose CPU kernel is a scalar loop with a division per element: on this
model (ONNX Runtime 1.32, profiled on one thread) its nodes took about three times as long as the
separate ``Add`` nodes and the vectorised ``LayerNormalization`` they replace.
For the same reason the sessions of an export turn off ONNX Runtime's own online
``SkipLayerNormFusion`` (it fires on the int8 graph); the manifest lists what every session must
disable (:attr:`Manifest.disabled_optimizers <streamcascade.onnx_exports.manifest.Manifest>`).
``EmbedLayerNormalization`` is left unfused: no gain was measured, and it would replace the
attention mask by a per-row length. The int8 model is quantised from the fused graph, so
``Attention`` becomes ``QAttention`` (int8 Q/K/V projections, attention itself in fp32).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamcascade.errors import ModelFileError
from streamcascade.onnx_exports.manifest import (
    MANIFEST_FORMAT,
    Manifest,
    default_onnx_dir,
    model_spec,
    sha256_file,
)

log = logging.getLogger(__name__)

#: ONNX opset of the export; 17 has LayerNormalization as one op.
DEFAULT_OPSET = 17
#: Largest absolute difference allowed between ONNX fp32 and torch embeddings (unit vectors).
DEFAULT_TOLERANCE = 1e-4
#: The int8 model is refused below this mean cosine to fp32 (the benchmark's target is 0.99).
DEFAULT_MIN_INT8_COSINE = 0.98
#: ONNX Runtime online fusions that every session of an export turns off (see the module doc).
DISABLED_ORT_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion",)
#: Ops that take a weight matrix as their second input and are quantised to int8.
INT8_OP_TYPES: tuple[str, ...] = ("MatMul", "Attention")

#: Sentences for the parity check: varied length, punctuation, casing, numbers, rare words.
PARITY_SENTENCES: tuple[str, ...] = (
    "The film was a delight from start to finish.",
    "I wanted to like this movie, but the second half drags and the ending makes no sense.",
    "Worst. Purchase. Ever.",
    "She felt a wave of relief when the test results came back negative.",
    "The committee postponed its decision until the budget figures for 2024 were audited.",
    "ok",
    "Why would anyone think that's acceptable?!",
    "When my grandmother passed away I could not stop thinking about the summers at her farm, "
    "the smell of hay, and the way she laughed at her own jokes before she finished telling them.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The service at the restaurant was slow, though the food itself was excellent.",
    "I was ashamed because I had lied to my best friend about where I had been that night.",
    "Kafka consumer groups rebalance partitions when a member joins or leaves.",
    "Absolutely brilliant performances, a sharp script and a score you will hum for days.",
    "He shouted at me in front of everyone, and I was furious for the rest of the week.",
    "Tickets: $12.50 each; doors open at 7:30pm.",
    "This is the kind of movie you watch once and then forget about entirely, which is a pity "
    "given the talent involved. " * 6,
)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, right-padded to the longest text (truncated to max_length)."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return ids, mask


def _cpu_session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_ORT_OPTIMIZERS))


def _torch_embed(model: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.asarray(model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())


@functools.lru_cache(maxsize=2)
def _reference_model(source_dir: str) -> Any:
    from transformers import BertModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BertModel.from_pretrained(source_dir, local_files_only=True).eval()


def reference_embeddings(source_dir: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Embeddings from ``transformers.BertModel`` + mean pooling + L2, or None without it.

    The model is loaded once per directory (the benchmark calls this for every batch).
    """
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return None
    model = _reference_model(str(source_dir))
    with torch.inference_mode():
        tid, tmask = torch.from_numpy(ids), torch.from_numpy(mask)
        hidden = model(input_ids=tid, attention_mask=tmask).last_hidden_state
        weights = tmask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return np.asarray(torch.nn.functional.normalize(pooled, dim=-1).numpy())


def _export_fp32(model: Any, path: Path, opset: int) -> None:
    import torch

    example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    with warnings.catch_warnings():
        # The torchscript exporter is deprecated in favour of dynamo; it is kept because its
        # graph is the one ORT's BERT fusions recognise, and it exports this module exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example, str(path), input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"], opset_version=opset, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"},
                          "sentence_embedding": {0: "batch"}})


def optimize_fp32(raw_path: Path, out_path: Path, *, heads: int, hidden: int) -> dict[str, Any]:
    """Fuse the exported graph with ONNX Runtime's BERT optimiser; what was fused, for the manifest.

    ``opt_level=0`` runs the optimiser's own pattern fusions only: the saved graph holds standard
    and ``com.microsoft`` ops, nothing tied to this machine's CPU (ONNX Runtime's online
    optimisations still run at session start, as for any model).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    options.enable_embed_layer_norm = False
    # The optimiser reports every fusion at INFO/WARNING on its own loggers; the manifest keeps it.
    logging.disable(logging.WARNING)
    try:
        model = optimize_model(str(raw_path), model_type="bert", num_heads=heads,
                               hidden_size=hidden, optimization_options=options, opt_level=0)
    finally:
        logging.disable(logging.NOTSET)
    model.save_model_to_file(str(out_path))
    # The fused nodes are the com.microsoft ops of the saved graph (the optimiser's own statistics
    # also count the LayerNormalization nodes that the export already had).
    fused = Counter(n.op_type for n in model.model.graph.node if n.domain == "com.microsoft")
    return {"tool": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0)",
            "fused": dict(fused),
            "left_unfused": ["SkipLayerNormalization", "EmbedLayerNormalization"],
            "disabled_optimizers": list(DISABLED_ORT_OPTIMIZERS)}


def quantize_int8(fp32_path: Path, int8_path: Path) -> dict[str, int]:
    """Dynamic int8 quantisation of the ops that multiply by a weight, per output channel.

    Only MatMuls (and fused ``Attention`` nodes) whose second input is a weight are quantised:
    quantising the two attention products (both inputs activations) and the embedding tables costs
    far more accuracy than it saves time (mean cosine 0.95 against 0.99 for this model). Returns
    how many nodes of each type were quantised.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    chosen = [n for n in graph.node if n.op_type in INT8_OP_TYPES
              and len(n.input) >= 2 and n.input[1] in weights]
    # The quantiser logs an advice to pre-process at WARNING on the root logger; silence it.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=list(INT8_OP_TYPES), nodes_to_quantize=[n.name for n in chosen],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)
    return dict(Counter(n.op_type for n in chosen))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(na * nb, 1e-12))


def export_model(
    name: str = "minilm-l6",
    out_dir: Path | None = None,
    *,
    int8: bool = True,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    min_int8_cosine: float = DEFAULT_MIN_INT8_COSINE,
    check_reference: bool = True,
    sentences: Sequence[str] = PARITY_SENTENCES,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Export encoder ``name`` into ``out_dir/name`` and return its manifest.

    Parameters
    ----------
    name
        A model of ``onnx_exports/models.json``.
    out_dir
        Parent directory of the export; ``<cache_dir>/onnx`` by default.
    int8
        Also write ``model.int8.onnx`` (dynamic int8 quantisation).
    opset
        ONNX opset of the export.
    tolerance
        Largest allowed absolute difference between ONNX fp32 and torch embeddings.
    min_int8_cosine
        Smallest allowed mean cosine of int8 against fp32 embeddings.
    check_reference
        Also compare the torch encoder with ``transformers.BertModel`` when it is importable.
    sentences
        Texts for the parity checks.
    progress
        Called with a line of text at each step.
    """
    from tokenizers import Tokenizer

    from streamcascade.onnx_exports.encoder import load_encoder, parameter_count

    say = progress or log.info
    spec = model_spec(name)
    source = spec.source_dir()
    target = (out_dir or default_onnx_dir()) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        say(f"loading {spec.package} weights from {source}")
        try:
            model = load_encoder(source)
            tokenizer = Tokenizer.from_file(str(source / spec.tokenizer))
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelFileError(
                f"cannot load {spec.package}'s weights from {source}: {exc}") from exc
        ids, mask = tokenize(tokenizer, sentences, spec.max_length)
        torch_emb = _torch_embed(model, ids, mask)
        parity: dict[str, Any] = {"sentences": len(sentences), "tolerance": tolerance}
        if check_reference:
            ref = reference_embeddings(source, ids, mask)
            if ref is not None:
                ref_diff = float(np.abs(ref - torch_emb).max())
                parity["torch_vs_transformers_max_abs_diff"] = ref_diff
                say(f"torch encoder vs transformers.BertModel: max |diff| {ref_diff:.2e}")
                if ref_diff > tolerance:
                    raise ModelFileError(
                        f"the torch encoder differs from transformers.BertModel by "
                        f"{ref_diff:.3g} > {tolerance}: weights not understood")
        cfg = model.cfg
        raw, fp32 = work / "model.raw.onnx", work / "model.onnx"
        say(f"exporting {name} to ONNX (opset {opset}, dynamic batch and sequence axes)")
        _export_fp32(model, raw, opset)
        import onnx

        onnx.checker.check_model(str(raw))
        optimization = optimize_fp32(raw, fp32, heads=cfg.num_attention_heads,
                                     hidden=cfg.hidden_size)
        raw.unlink()
        say(f"fused with ONNX Runtime's transformer optimiser: {optimization['fused']}")
        if optimization["fused"].get("Attention", 0) != cfg.num_hidden_layers:
            # Still a correct model (the parity check below decides that), only a slower one.
            log.warning("the optimiser fused %s Attention nodes for %d layers: this onnxruntime "
                        "does not match the export's attention pattern",
                        optimization["fused"].get("Attention", 0), cfg.num_hidden_layers)
        session = _cpu_session(fp32)
        batched = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        single = np.concatenate([
            session.run(None, {"input_ids": ids[i:i + 1, : int(mask[i].sum())],
                               "attention_mask": mask[i:i + 1, : int(mask[i].sum())]})[0]
            for i in range(len(ids))])
        diff = float(max(np.abs(batched - torch_emb).max(), np.abs(single - torch_emb).max()))
        parity["fp32_max_abs_diff"] = diff
        say(f"ONNX fp32 vs torch on {len(sentences)} sentences: max |diff| {diff:.2e}")
        if not diff <= tolerance:
            raise ModelFileError(f"ONNX export of {name} fails parity: max |diff| {diff:.3g} > "
                                 f"{tolerance}")
        files = {"fp32": fp32}
        if int8:
            int8_path = work / "model.int8.onnx"
            say("quantising to int8 (dynamic, per channel, weight MatMuls and Attention)")
            optimization["int8_quantized"] = quantize_int8(fp32, int8_path)
            q = _cpu_session(int8_path).run(None, {"input_ids": ids, "attention_mask": mask})[0]
            cos = _cosines(q, batched)
            parity.update(int8_mean_cosine=float(cos.mean()), int8_min_cosine=float(cos.min()),
                          int8_min_mean_cosine=min_int8_cosine)
            say(f"int8 vs fp32: mean cosine {cos.mean():.4f}, min {cos.min():.4f}")
            if not cos.mean() >= min_int8_cosine:
                raise ModelFileError(f"int8 model of {name} fails parity: mean cosine "
                                     f"{cos.mean():.4f} < {min_int8_cosine}")
            files["int8"] = int8_path
        shutil.copyfile(source / spec.tokenizer, work / "tokenizer.json")
        files["tokenizer"] = work / "tokenizer.json"
        manifest = Manifest(target, {
            "format": MANIFEST_FORMAT,
            "model": name,
            "description": spec.description,
            "source": {"package": spec.package, "version": spec.package_version(),
                       "weights_sha256": sha256_file(source / spec.weights),
                       "licence": spec.licence},
            "export": {"opset": opset, "exporter": "torch.onnx (torchscript)",
                       "versions": _versions(),
                       "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
            "inputs": ["input_ids", "attention_mask"],
            "output": "sentence_embedding",
            "pooling": "mean, L2-normalised",
            "dimensions": {"hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                           "heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size,
                           "max_length": spec.max_length, "parameters": parameter_count(model)},
            "files": {kind: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for kind, p in files.items()},
            "parity": parity,
            "optimization": optimization,
        })
        Manifest(work, manifest.data).write()
        shutil.rmtree(target, ignore_errors=True)
        work.replace(target)
        say(f"wrote {target}")
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tokenizers
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__}
