"""The package's shape: one installed package, sorted public names, a working CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import streamcascade
from streamcascade.cli import cli

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("plugin", "operators", "models", "onnx_exports")


def _modules() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def _static_all(path: Path) -> list[str] | None:
    """The literal ``__all__`` of a module, read without importing it."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                value = ast.literal_eval(node.value)
                return list(value)
    return None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_public_names_are_sorted_and_unique(path: Path) -> None:
    names = _static_all(path)
    if names is None:
        return
    assert names == sorted(names), f"{path}: __all__ is not sorted"
    assert len(names) == len(set(names)), f"{path}: __all__ repeats a name"


def test_package_exports_what_it_lists() -> None:
    for name in streamcascade.__all__:
        assert hasattr(streamcascade, name), name


def test_subpackages_come_from_the_checkout_layout() -> None:
    import streamcascade.models
    import streamcascade.operators

    assert Path(streamcascade.__file__).parent == REPO / "plugin"
    assert Path(streamcascade.models.__file__).parent == REPO / "models"
    assert Path(streamcascade.operators.__file__).parent == REPO / "operators"


def test_no_top_level_models_or_operators_module(tmp_path: Path) -> None:
    # Run from an unrelated folder, so the checkout itself is not on sys.path.
    probe = (
        "import importlib.util as u; "
        "print([n for n in ('models', 'operators', 'plugin', 'onnx_exports') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _all_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _all_commands(cli), ids=lambda p: " ".join(p) or "streamcascade")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_console_script_runs() -> None:
    script = Path(sys.executable).parent / "streamcascade"
    assert script.is_file(), "the streamcascade console script is not installed"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert streamcascade.__version__ in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "streamcascade", "kafka", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "up" in out.stdout and "down" in out.stdout
