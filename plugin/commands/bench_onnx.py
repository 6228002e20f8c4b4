"""``streamcascade bench onnx``: the exported encoder against torch eager, same inputs, same run.

Engines, all on the CPU with the same number of threads (``torch.set_num_threads`` and ONNX
Runtime's intra-op threads, one inter-op thread each):

- ``torch_transformers``: ``transformers.BertModel`` (its default SDPA attention) + mean pooling +
  L2, the reference implementation a user would otherwise run (when transformers is importable);
- ``torch_encoder``: the module that was exported (``onnx_exports/encoder.py``), in eager mode;
- ``onnx_fp32`` and ``onnx_int8``: the exported models in ONNX Runtime (graph optimisation ALL,
  less the online optimisers the export's manifest disables; the graph fusions were done once at
  export, see ``setup.optimization``).

Every engine gets the very same pre-tokenized batches (real review sentences truncated to
``max_length`` tokens, each batch padded to its longest text). Engines take turns batch by batch,
so that a busy machine hurts all alike. Each batch is timed once per round; a cell's
``events_per_s`` is its events over the sum of each batch's best time (the least disturbed, as
``timeit`` reports) and ``events_per_s_median`` the same with median times. The "torch eager"
baseline of the ratios is the faster of the two torch engines. Peak memory is the process's
resident peak while each engine runs (VmHWM, reset between engines), so it includes whatever was
loaded before.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from streamcascade.errors import ModelFileError
from streamcascade.models.datasets import read_stream
from streamcascade.onnx_exports.manifest import load_manifest
from streamcascade.settings import Settings

BATCH_SIZES = (1, 8, 32, 64)
# The shared streams live beside the checkout; commands run from its root.
_DEFAULT_STREAMS = (Path("../shared/datasets/imdb.jsonl.gz"),)


def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


def _texts(stream: Path | None, count: int) -> tuple[list[str], str]:
    from streamcascade.onnx_exports.export import PARITY_SENTENCES

    for path in ([stream] if stream else list(_DEFAULT_STREAMS)):
        if path.is_file():
            return [r.text for r in read_stream(path, limit=count)], str(path)
    if stream:
        raise click.ClickException(f"no stream file at {stream}")
    texts = list(PARITY_SENTENCES)
    return (texts * (count // len(texts) + 1))[:count], "built-in parity sentences"


def _batches(tokenizer: Any, texts: list[str], size: int,
             max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from streamcascade.onnx_exports.export import tokenize

    return [tokenize(tokenizer, texts[i:i + size], max_length) for i in range(0, len(texts), size)]


def _engines(model_dir: Path, threads: int) -> dict[str, Callable[[np.ndarray, np.ndarray], Any]]:
    import onnxruntime as ort
    import torch

    from streamcascade.onnx_exports.encoder import load_encoder
    from streamcascade.onnx_exports.export import reference_embeddings
    from streamcascade.onnx_exports.manifest import model_spec

    torch.set_num_threads(threads)
    manifest = load_manifest(model_dir)
    source = model_spec(manifest.model).source_dir()
    engines: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {}
    try:
        import transformers  # noqa: F401

        engines["torch_transformers"] = lambda i, m: reference_embeddings(source, i, m)
    except ImportError:
        pass
    encoder = load_encoder(source)

    def torch_encoder(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())

    engines["torch_encoder"] = torch_encoder
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for kind in ("fp32", "int8"):
        if manifest.has(kind):
            session = ort.InferenceSession(str(manifest.verified_path(kind)), options,
                                           providers=["CPUExecutionProvider"],
                                           disabled_optimizers=manifest.disabled_optimizers)
            engines[f"onnx_{kind}"] = (lambda s: lambda i, m: s.run(
                None, {"input_ids": i, "attention_mask": m})[0])(session)
    return engines


def run_benchmark(model_dir: Path, *, threads: int, events: int, rounds: int, max_length: int,
                  stream: Path | None) -> dict[str, Any]:
    from tokenizers import Tokenizer

    manifest = load_manifest(model_dir)
    tokenizer = Tokenizer.from_file(str(manifest.verified_path("tokenizer")))
    texts, source = _texts(stream, events)
    batches = {b: _batches(tokenizer, texts, b, max_length) for b in BATCH_SIZES}
    tokens = [int(m.sum()) for _, m in batches[1]]
    rss_before = _rss_mb("VmRSS")
    engines = _engines(model_dir, threads)
    # seconds[engine][batch size][batch index] -> one time per round
    seconds: dict[str, dict[int, list[list[float]]]] = {
        e: {b: [[] for _ in batches[b]] for b in BATCH_SIZES} for e in engines}
    peak: dict[str, float | None] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, fn in engines.items():  # warm-up, outputs for the cosine, and peak memory
        _reset_peak()
        outputs[name] = np.concatenate([fn(i, m) for i, m in batches[32]])
        for b in BATCH_SIZES:
            fn(*batches[b][0])
        peak[name] = _rss_mb("VmHWM")
    total = rounds * len(engines) * sum(len(batches[b]) for b in BATCH_SIZES)
    with tqdm(total=total, desc="bench onnx", unit="batch", leave=False) as bar:
        for _ in range(rounds):
            for b in BATCH_SIZES:
                for k, (ids, mask) in enumerate(batches[b]):
                    # Engines take turns on each batch, so a burst of load elsewhere on the
                    # machine hits every engine's timings of that batch alike.
                    for name, fn in engines.items():
                        start = time.perf_counter()
                        fn(ids, mask)
                        seconds[name][b][k].append(time.perf_counter() - start)
                        bar.update(1)
    table: dict[str, dict[str, Any]] = {}
    for name in engines:
        table[name] = {}
        for b in BATCH_SIZES:
            best = sum(min(times) for times in seconds[name][b])
            median = sum(statistics.median(times) for times in seconds[name][b])
            table[name][str(b)] = {"events_per_s": round(len(texts) / best, 2),
                                   "events_per_s_median": round(len(texts) / median, 2)}
        table[name]["peak_rss_mb"] = peak[name]

    def eps(name: str, b: int = 32, key: str = "events_per_s") -> float:
        return float(table[name][str(b)][key]) if name in table else 0.0

    torch_names = [n for n in ("torch_transformers", "torch_encoder") if n in table]
    torch_best = max(torch_names, key=eps)
    from streamcascade.onnx_exports.manifest import model_spec

    config = json.loads((model_spec(manifest.model).source_dir() / "config.json").read_text())
    flops_per_event = sum(_encoder_flops(config, ids.shape) for ids, _ in batches[32]) / len(texts)
    result: dict[str, Any] = {
        "onnx_vs_torch_batch32": round(eps("onnx_fp32") / eps(torch_best), 3),
        "int8_vs_fp32_batch32": round(eps("onnx_int8") / eps("onnx_fp32"), 3)
        if "onnx_int8" in table else None,
        "int8_cosine": round(float(_mean_cosine(outputs["onnx_int8"], outputs["onnx_fp32"])), 5)
        if "onnx_int8" in table else None,
        "onnx_vs_torch_batch32_median": round(
            eps("onnx_fp32", key="events_per_s_median")
            / eps(torch_best, key="events_per_s_median"), 3),
        "torch_baseline": torch_best,
        "fp32_max_abs_diff_vs_torch": float(np.abs(outputs["onnx_fp32"]
                                                   - outputs["torch_encoder"]).max()),
        "roofline": _roofline(table, flops_per_event, _fp32_peak_gflops(threads), torch_best),
        "table": table,
        "setup": {
            "model": manifest.model, "model_dir": str(model_dir), "threads": threads,
            "threads_note": "torch.set_num_threads and ORT intra_op_num_threads; inter-op 1",
            "events_per_cell": len(texts), "rounds": rounds, "max_length": max_length,
            "texts": source, "mean_tokens": round(float(np.mean(tokens)), 1),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor(), "python": platform.python_version(),
            "load_average_after": list(os.getloadavg()), "rss_mb_before_models": rss_before,
            "versions": manifest.data.get("export", {}).get("versions", {}),
            "optimization": manifest.data.get("optimization"),
        },
    }
    return result


def _encoder_flops(config: dict[str, Any], shape: tuple[int, int]) -> float:
    """Floating-point operations of one encoder pass over a padded batch of ``shape`` (texts,
    tokens): the layers' matrix products (2 per multiply-add), attention's two products
    included; embeddings, norms, softmax and pooling are small and left out."""
    texts, tokens = shape
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner)  # Q, K, V, output; two FFN
    attention = 2 * 2 * tokens * hidden  # per token: scores against every token, then values
    return float(config["num_hidden_layers"] * texts * tokens * (per_token + attention))


def _fp32_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The fp32 matrix-product rate this machine reaches with ``threads`` threads: the best of a
    few large square products in torch (the rate the encoders' own products approach)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _roofline(table: dict[str, dict[str, Any]], flops_per_event: float, peak: float,
              torch_best: str) -> dict[str, Any]:
    """How close each engine comes, at batch 32, to the machine's fp32 product rate, and so the
    largest fp32 speed-up over torch that any engine could reach here."""
    achieved = {name: round(row["32"]["events_per_s"] * flops_per_event / 1e9, 1)
                for name, row in table.items()}
    return {
        "fp32_peak_gflops": round(peak, 1),
        "flops_per_event_batch32": round(flops_per_event),
        "gflops_batch32": achieved,
        "share_of_fp32_peak_batch32": {n: round(g / peak, 3) for n, g in achieved.items()},
        "fp32_ceiling_vs_torch_batch32": round(peak / achieved[torch_best], 3),
        "note": "int8 runs integer products, so its share may exceed 1",
    }


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(axis=1)
    return float(np.mean(num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                          1e-12)))


@click.command("onnx")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result here (it is printed either way).")
@click.option("--model", default="minilm-l6", show_default=True)
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The export's folder (default: <cache_dir>/onnx/<model>).")
@click.option("--threads", type=int, default=None,
              help="Threads for torch and ONNX Runtime alike (default: the usable cores).")
@click.option("--events", default=128, show_default=True, help="Texts per cell.")
@click.option("--rounds", default=3, show_default=True, help="Timed rounds per cell.")
@click.option("--max-length", default=128, show_default=True, help="Tokens per text at most.")
@click.option("--stream", type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL(.gz) stream whose texts to use (default: the shared IMDB stream).")
def command(json_out: Path | None, model: str, model_dir: Path | None, threads: int | None,
            events: int, rounds: int, max_length: int, stream: Path | None) -> None:
    """Events/s of the ONNX encoder (fp32, int8) against torch eager at batch 1, 8, 32, 64."""
    directory = model_dir or Path(Settings().cache_dir).expanduser() / "onnx" / model
    n_threads = threads or len(os.sched_getaffinity(0))
    try:
        result = run_benchmark(directory, threads=n_threads, events=events, rounds=rounds,
                               max_length=max_length, stream=stream)
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from None
    text = json.dumps(result, indent=2)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    click.echo(text)
