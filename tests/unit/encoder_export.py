"""The exported MiniLM encoder that tests of ONNX stages run against.

The export made at set-up (``streamcascade onnx export``, in the cache) is used when its files
match their manifest; otherwise one is exported into a temporary folder, once per module (slower).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcascade.errors import ModelFileError
from streamcascade.onnx_exports.manifest import FILE_KINDS, default_onnx_dir, load_manifest


def encoder_export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a verified export of ``minilm-l6`` (manifest, ONNX files, tokenizer)."""
    cached = default_onnx_dir() / "minilm-l6"
    try:
        manifest = load_manifest(cached)
        for kind in FILE_KINDS:
            if manifest.has(kind):
                manifest.verified_path(kind)
        return cached
    except ModelFileError:
        from streamcascade.onnx_exports.export import export_model

        out = tmp_path_factory.mktemp("onnx")
        return export_model("minilm-l6", out, int8=False, check_reference=False).directory
