"""A sentence encoder cut in two at a layer: a frozen bottom and a top that is fine-tuned.

The fine-tuned stage (:mod:`streamcascade.models.stages.finetune`) trains only the encoder's last
``n_top`` layers (and a head). The layers below never change, so they are exported to ONNX once,
here, with the top as the package ships it: an export directory (by default
``<cache_dir>/onnx/<model>-top<n_top>``) holds::

    bottom.onnx, bottom.int8.onnx   (input_ids, attention_mask) -> hidden states (B, S, H)
    top.onnx, top.int8.onnx         (hidden, attention_mask) -> L2-normalised mean-pooled (B, H)
    top.safetensors                 the top's torch weights, where fine-tuning starts
    tokenizer.json                  copied from the weight package
    manifest.json                   as for the whole encoder (sha256 of every file, parity)

A fine-tuned snapshot is then only a new top (:func:`export_top`, in memory): a few megabytes
instead of the whole model, and what a worker loads when the snapshot changes. Both halves are
fused and quantised as the whole encoder is (:mod:`.export`) and checked against torch: fp32
within ``tolerance`` (largest absolute difference; the bottom's hidden states are not unit
vectors, so theirs is scaled by their largest magnitude), int8 by its mean cosine to fp32.

Everything here needs torch; the stage imports it only where it trains or builds the export.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamcascade.errors import ModelFileError
from streamcascade.onnx_exports.encoder import BertConfig, SentenceEncoder, _Layer, load_encoder
from streamcascade.onnx_exports.export import (
    DEFAULT_MIN_INT8_COSINE,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    DISABLED_ORT_OPTIMIZERS,
    PARITY_SENTENCES,
    optimize_fp32,
    quantize_int8,
    tokenize,
)
from streamcascade.onnx_exports.manifest import (
    MANIFEST_FORMAT,
    Manifest,
    default_onnx_dir,
    load_manifest,
    model_spec,
    sha256_file,
)

log = logging.getLogger(__name__)

#: Inputs and output of the top graph.
TOP_INPUTS = ("hidden", "attention_mask")
TOP_OUTPUT = "sentence_embedding"


def split_dir_name(model: str, n_top: int) -> str:
    """The folder name of ``model``'s export split below its last ``n_top`` layers."""
    return f"{model}-top{n_top}"


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The encoder's attention mask: 0 over tokens, -10000 over padding (as BERT was trained)."""
    mask = attention_mask.to(dtype)
    return (1.0 - mask[:, None, None, :]) * -10000.0


class EncoderBottom(nn.Module):
    """The embeddings and the first ``n_bottom`` layers: ``(input_ids, attention_mask) ->
    hidden``."""

    def __init__(self, cfg: BertConfig, n_bottom: int) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.embed_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(n_bottom))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(torch.zeros_like(input_ids)))
        x = self.embed_norm(x)
        additive = additive_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, additive)
        return x


class EncoderTop(nn.Module):
    """The last ``n_top`` layers, mean pooling over real tokens and L2 normalisation:
    ``(hidden, attention_mask) -> embedding``."""

    def __init__(self, cfg: BertConfig, n_top: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(n_top))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        additive = additive_mask(attention_mask, hidden.dtype)
        x = hidden
        for layer in self.layers:
            x = layer(x, additive)
        weights = attention_mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


def split_encoder(encoder: SentenceEncoder, n_top: int) -> tuple[EncoderBottom, EncoderTop]:
    """The encoder's bottom and its last ``n_top`` layers, with its weights (copies)."""
    cfg = encoder.cfg
    n_bottom = cfg.num_hidden_layers - n_top
    if not 1 <= n_top <= cfg.num_hidden_layers:
        raise ValueError(f"n_top must be within 1..{cfg.num_hidden_layers}, got {n_top}")
    below: dict[str, torch.Tensor] = {}
    above: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            if int(index) >= n_bottom:
                above[f"layers.{int(index) - n_bottom}.{rest}"] = value.clone()
                continue
        below[key] = value.clone()
    bottom, top = EncoderBottom(cfg, n_bottom), EncoderTop(cfg, n_top)
    bottom.load_state_dict(below, strict=True)
    top.load_state_dict(above, strict=True)
    return bottom.eval(), top.eval()


def load_top(manifest: Manifest) -> EncoderTop:
    """The top a split export starts from (its ``top.weights`` file), in torch."""
    from safetensors.torch import load_file

    cfg = BertConfig(**manifest.data["config"])
    top = EncoderTop(cfg, int(manifest.data["split"]["n_top"]))
    top.load_state_dict(load_file(str(manifest.verified_path("top.weights"))), strict=True)
    return top.eval()


# -- ONNX -----------------------------------------------------------------------------------------


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path,
            inputs: Sequence[str], output: str, opset: int) -> None:
    dynamic = {name: {0: "batch", 1: "sequence"} for name in inputs}
    with warnings.catch_warnings():
        # The torchscript exporter is the one whose graph ORT's BERT fusions recognise (.export).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=list(inputs),
                          output_names=[output], opset_version=opset, dynamo=False,
                          dynamic_axes={**dynamic, output: {0: "batch"}})


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_ORT_OPTIMIZERS))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(len(a), -1)
    b2 = b.reshape(len(b), -1)
    return np.asarray((a2 * b2).sum(1) / np.maximum(
        np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1), 1e-12))


def _fuse(raw: Path, out: Path, heads: int, hidden: int, n_layers: int) -> dict[str, Any]:
    """ORT's transformer fusions (as for the whole encoder); a half with no layer is kept as
    exported, and one whose attention the optimiser misses is only slower, not wrong."""
    if n_layers == 0:
        shutil.copyfile(raw, out)
        return {"fused": {}}
    optimization = optimize_fp32(raw, out, heads=heads, hidden=hidden)
    if optimization["fused"].get("Attention", 0) != n_layers:
        log.warning("the optimiser fused %s Attention nodes for %d layers",
                    optimization["fused"].get("Attention", 0), n_layers)
    return optimization


@dataclass(frozen=True)
class TopExport:
    """A top exported to ONNX and checked: the graph's bytes and its parity figures."""

    variant: str
    onnx: bytes
    parity: dict[str, float]


def export_top(top: EncoderTop, hidden: np.ndarray, mask: np.ndarray, *, variant: str,
               tolerance: float = DEFAULT_TOLERANCE,
               min_int8_cosine: float = DEFAULT_MIN_INT8_COSINE,
               opset: int = DEFAULT_OPSET) -> TopExport:
    """Export ``top`` (its current weights) to ONNX ``variant`` (``"fp32"`` or ``"int8"``), in
    memory, and check it against the same weights in torch on ``hidden``/``mask``.

    The fp32 graph must match torch within ``tolerance`` (largest absolute difference of the
    unit-length embeddings); an int8 graph must keep a mean cosine of at least
    ``min_int8_cosine`` to torch. A failed check is a :class:`ModelFileError`: nothing is
    published from weights whose export does not reproduce them.
    """
    if variant not in ("fp32", "int8"):
        raise ValueError(f"variant must be fp32 or int8, got {variant!r}")
    cfg = top.cfg
    top = top.eval()
    with torch.inference_mode():
        expected = top(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    # Not a TemporaryDirectory: its exit hook would delete the folder under a training thread
    # still exporting while the process stops.
    tmp = tempfile.mkdtemp(prefix="streamcascade-top-")
    try:
        raw, fp32 = Path(tmp) / "top.raw.onnx", Path(tmp) / "top.onnx"
        example = (torch.zeros((2, 8, cfg.hidden_size)), torch.ones((2, 8), dtype=torch.int64))
        _export(top, example, raw, TOP_INPUTS, TOP_OUTPUT, opset)
        _fuse(raw, fp32, cfg.num_attention_heads, cfg.hidden_size, len(top.layers))
        feeds = {"hidden": hidden, "attention_mask": mask}
        diff = float(np.abs(_session(fp32).run(None, feeds)[0] - expected).max())
        parity = {"fp32_max_abs_diff": diff}
        if not diff <= tolerance:
            raise ModelFileError(f"the top's ONNX export does not match its torch weights: "
                                 f"max |diff| {diff:.3g} > {tolerance}")
        path = fp32
        if variant == "int8":
            path = Path(tmp) / "top.int8.onnx"
            quantize_int8(fp32, path)
            cos = _cosines(_session(path).run(None, feeds)[0], expected)
            parity.update(int8_mean_cosine=float(cos.mean()), int8_min_cosine=float(cos.min()))
            if not cos.mean() >= min_int8_cosine:
                raise ModelFileError(f"the top's int8 export strays from its torch weights: "
                                     f"mean cosine {cos.mean():.4f} < {min_int8_cosine}")
        return TopExport(variant, path.read_bytes(), parity)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_split(model: str = "minilm-l6", n_top: int = 2, out_dir: Path | None = None, *,
                 source: Path | None = None, max_length: int | None = None,
                 opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE,
                 min_int8_cosine: float = DEFAULT_MIN_INT8_COSINE,
                 progress: Callable[[str], None] | None = None) -> Manifest:
    """Export ``model`` split below its last ``n_top`` layers into ``out_dir`` (by default
    ``<cache_dir>/onnx``) and return the manifest.

    The weights come from ``model``'s package (``onnx_exports/models.json``), or from
    ``source``, a folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``
    (then ``model`` only names the export). Files are checked as in :mod:`.export` and moved
    into place only once every check has passed.
    """
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    say = progress or log.info
    if source is None:
        spec = model_spec(model)
        source, tokenizer_file = spec.source_dir(), spec.tokenizer
        max_length = max_length or spec.max_length
        description = spec.description
        origin = {"package": spec.package, "version": spec.package_version(),
                  "weights_sha256": sha256_file(source / spec.weights)}
    else:
        tokenizer_file, description = "tokenizer.json", f"{model} from {source}"
        origin = {"folder": str(source),
                  "weights_sha256": sha256_file(source / "model.safetensors")}
    target = (out_dir or default_onnx_dir()) / split_dir_name(model, n_top)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        say(f"splitting {model} below its last {n_top} layer(s)")
        try:
            encoder = load_encoder(source)
            tokenizer = Tokenizer.from_file(str(source / tokenizer_file))
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelFileError(f"cannot load the weights of {model} from {source}: "
                                 f"{exc}") from exc
        cfg = encoder.cfg
        max_length = min(max_length or cfg.max_position_embeddings, cfg.max_position_embeddings)
        bottom, top = split_encoder(encoder, n_top)
        n_bottom = cfg.num_hidden_layers - n_top
        ids, mask = tokenize(tokenizer, PARITY_SENTENCES, max_length)
        with torch.inference_mode():
            hidden = bottom(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        raw = work / "bottom.raw.onnx"
        example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
        _export(bottom, example, raw, ("input_ids", "attention_mask"), "hidden", opset)
        optimization = _fuse(raw, work / "bottom.onnx", cfg.num_attention_heads,
                             cfg.hidden_size, n_bottom)
        raw.unlink()
        feeds = {"input_ids": ids, "attention_mask": mask}
        real = mask.astype(bool)  # padded positions are not compared: nothing reads them
        got = _session(work / "bottom.onnx").run(None, feeds)[0]
        diff = float(np.abs(got - hidden)[real].max())
        parity: dict[str, float] = {"bottom_fp32_max_abs_diff": diff}
        say(f"bottom ONNX fp32 vs torch: max |diff| {diff:.2e}")
        if not diff <= tolerance * max(1.0, float(np.abs(hidden[real]).max())):
            raise ModelFileError(f"the bottom's ONNX export fails parity: max |diff| {diff:.3g}")
        files = {"bottom.fp32": work / "bottom.onnx"}
        if n_bottom:
            quantize_int8(work / "bottom.onnx", work / "bottom.int8.onnx")
            cos = _cosines(_session(work / "bottom.int8.onnx").run(None, feeds)[0][real],
                           got[real])
            parity["bottom_int8_mean_cosine"] = float(cos.mean())
            say(f"bottom int8 vs fp32: mean cosine {cos.mean():.4f}")
            if not cos.mean() >= min_int8_cosine:
                raise ModelFileError(f"the bottom's int8 export fails parity: mean cosine "
                                     f"{cos.mean():.4f} < {min_int8_cosine}")
            files["bottom.int8"] = work / "bottom.int8.onnx"
        for variant in ("fp32", "int8"):
            exported = export_top(top, hidden, mask, variant=variant, tolerance=tolerance,
                                  min_int8_cosine=min_int8_cosine, opset=opset)
            path = work / ("top.onnx" if variant == "fp32" else "top.int8.onnx")
            path.write_bytes(exported.onnx)
            files[f"top.{variant}"] = path
            parity.update({f"top_{k}": v for k, v in exported.parity.items()})
        save_file({k: v.contiguous() for k, v in top.state_dict().items()},
                  str(work / "top.safetensors"))
        files["top.weights"] = work / "top.safetensors"
        shutil.copyfile(source / tokenizer_file, work / "tokenizer.json")
        files["tokenizer"] = work / "tokenizer.json"
        manifest = Manifest(target, {
            "format": MANIFEST_FORMAT,
            "model": model,
            "description": f"{description}; split below the last {n_top} layer(s)",
            "source": origin,
            "split": {"n_top": n_top, "n_bottom": n_bottom},
            "config": asdict(cfg),
            "export": {"opset": opset,
                       "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
            "dimensions": {"hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                           "heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size,
                           "max_length": max_length,
                           "parameters": sum(p.numel() for p in encoder.parameters()),
                           "top_parameters": sum(p.numel() for p in top.parameters())},
            "files": {kind: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for kind, p in files.items()},
            "parity": parity,
            "optimization": {"disabled_optimizers": list(DISABLED_ORT_OPTIMIZERS),
                             "bottom_fused": optimization.get("fused", {})},
        })
        Manifest(work, manifest.data).write()
        shutil.rmtree(target, ignore_errors=True)
        work.replace(target)
        say(f"wrote {target}")
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_split(model: str, n_top: int, out_dir: Path | None = None) -> Path:
    """The folder of ``model``'s split export, exported first when absent or corrupt."""
    target = (out_dir or default_onnx_dir()) / split_dir_name(model, n_top)
    try:
        manifest = load_manifest(target)
        for kind in manifest.data["files"]:
            manifest.verified_path(kind)
        return target
    except (ModelFileError, KeyError):
        return export_split(model, n_top, out_dir).directory
