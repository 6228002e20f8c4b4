"""The layers depend one way: ``plugin`` -> ``operators`` -> ``models``.

Each layer is checked in a fresh interpreter, which lists the layer's modules without importing
them, then forks once per module and imports that one module in the child. The child reports which
of our modules the import loaded, and which of the layer's forbidden third-party packages our code
tried to import (those are blocked in the child, so a package that imports one of them only
optionally, as httpx does click, still imports). One interpreter start-up serves a whole layer, and
a finding names the module whose import is at fault.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

# argv: the layer's package, then a JSON list of top-level packages to block. Prints one JSON
# object per module: its name, the modules its import loaded beyond the probe's own imports, the
# blocked imports tried as [importer, name], and the import's error if it failed. Listing the
# modules imports the layer's parent packages, so every child counts those, as a fresh import does.
_PROBE = r"""
import importlib
import importlib.abc
import importlib.util
import json
import os
import pkgutil
import sys
import traceback

package, blocked = sys.argv[1], set(json.loads(sys.argv[2]))
# Imported once before forking, so that each child does not pay for them: neither is ours, and
# neither imports a blocked package (a blocked package loaded here would escape the blocker).
import asyncio
import numpy

assert not blocked & {name.partition(".")[0] for name in sys.modules}, "preloaded a blocked one"
BASELINE = set(sys.modules)
attempts = []


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in blocked:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen "):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__") if frame is not None else None
        attempts.append([importer, name])
        raise ModuleNotFoundError(f"{name} is blocked by the layer probe", name=name)


def modules_of(package):
    spec = importlib.util.find_spec(package)
    found = [package]
    for info in pkgutil.iter_modules(spec.submodule_search_locations or []):
        name = f"{package}.{info.name}"
        found += modules_of(name) if info.ispkg else [name]
    return found


def probe(name):
    sys.meta_path.insert(0, Blocker())
    error = None
    try:
        importlib.import_module(name)
    except BaseException:
        error = traceback.format_exc(limit=-3)
    loaded = sorted(set(sys.modules) - BASELINE)
    return {"module": name, "loaded": loaded, "attempts": attempts, "error": error}


for name in modules_of(package):
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        print(json.dumps(probe(name)), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
"""

_KAFKA_AND_SERVICE = (
    "aiokafka",
    "click",
    "confluent_kafka",
    "faust",
    "mode",
    "prometheus_client",
    "pydantic_settings",
)


@dataclass(frozen=True)
class Layer:
    package: str
    may_load: tuple[str, ...]  # our packages (with their submodules) it may import
    blocked: tuple[str, ...]  # third-party packages its code must not import


MODELS = Layer(
    "streamcascade.models",
    may_load=("streamcascade.models", "streamcascade.onnx_exports"),
    blocked=_KAFKA_AND_SERVICE,
)
# ``streamcascade.errors`` is the public path of the core's exceptions (they live in models/).
OPERATORS = Layer(
    "streamcascade.operators",
    may_load=(
        "streamcascade.errors",
        "streamcascade.models",
        "streamcascade.onnx_exports",
        "streamcascade.operators",
    ),
    blocked=("click", "pydantic_settings"),
)
ONNX_EXPORTS = Layer(
    "streamcascade.onnx_exports",
    may_load=("streamcascade.errors", "streamcascade.models", "streamcascade.onnx_exports"),
    blocked=_KAFKA_AND_SERVICE,
)


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@functools.cache
def _probe(package: str, blocked: tuple[str, ...]) -> tuple[dict[str, object], ...]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, package, json.dumps(blocked)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    reports = tuple(json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))
    assert len(reports) > 1, f"the probe found no module in {package}: {out.stderr}"
    return reports


def _offenders(layer: Layer, may_load: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """For each module of the layer that breaks its rule, what it loaded or tried to import."""
    allowed = layer.may_load if may_load is None else may_load
    found: dict[str, list[str]] = {}
    for report in _probe(layer.package, layer.blocked):
        loaded: list[str] = report["loaded"]  # type: ignore[assignment]
        attempts: list[list[str | None]] = report["attempts"]  # type: ignore[assignment]
        bad = [m for m in loaded if m.startswith("streamcascade.") and not _within(m, allowed)]
        bad += [
            f"{name} (imported by {importer})"
            for importer, name in attempts
            if importer is None or importer.startswith("streamcascade")
        ]
        if report["error"]:
            bad.append(f"import failed: {report['error']}")
        if bad:
            found[str(report["module"])] = bad
    return found


@pytest.mark.parametrize("layer", [MODELS, OPERATORS, ONNX_EXPORTS], ids=lambda la: la.package)
def test_layer_imports_only_what_is_below_it(layer: Layer) -> None:
    offenders = _offenders(layer)
    assert not offenders, "imports across the layers:\n" + json.dumps(offenders, indent=2)


def test_probe_finds_a_module_loading_another_layer() -> None:
    # The operator's wiring loads the rest of operators/: forbidden under the core's rule.
    offenders = _offenders(OPERATORS, may_load=MODELS.may_load)
    assert "streamcascade.operators.operator" in offenders["streamcascade.operators.runtime"]


def test_probe_finds_a_blocked_import() -> None:
    # The exporter imports torch itself; with torch blocked, the probe must name it.
    offenders = _offenders(Layer("streamcascade.onnx_exports", (), blocked=("torch",)))
    found = offenders["streamcascade.onnx_exports.encoder"]
    assert "torch (imported by streamcascade.onnx_exports.encoder)" in found
    assert any("torch is blocked" in line for line in found)


def test_package_root_imports_nothing_heavy() -> None:
    probe = "import sys, json, streamcascade; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    ours = [m for m in loaded if m.startswith("streamcascade.")]
    heavy = ("numpy", "onnxruntime", "pydantic", "torch", "transformers", *_KAFKA_AND_SERVICE)
    theirs = [m for m in loaded if _within(m, heavy)]
    assert ours == [], f"`import streamcascade` imports {ours}"
    assert theirs == [], f"`import streamcascade` imports {theirs}"
