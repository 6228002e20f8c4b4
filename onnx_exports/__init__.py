"""Export tooling for the ONNX stage: torch to ONNX, parity check, int8 quantisation, manifest.

Importing this package is cheap and torch-free: :mod:`.manifest` (the list of exportable models
and the manifest of an export) is what the ONNX stage reads at run time; :mod:`.export` (which
needs torch) is imported only by ``streamcascade onnx export`` and the benchmark.
"""

from streamcascade.onnx_exports.manifest import (
    Manifest,
    ModelSpec,
    default_onnx_dir,
    load_manifest,
    model_specs,
)

__all__ = ["Manifest", "ModelSpec", "default_onnx_dir", "load_manifest", "model_specs"]
