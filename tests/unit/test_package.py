"""The package's shape: every module imports and has the names it declares, a small public API
that the README's example uses, one installed package, a working CLI."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
from click.testing import CliRunner
from source_modules import REPO, SourceModule, package_dirs, source_modules

import streamcascade
from streamcascade.cli import cli

SOURCE_DIRS = ("plugin", "operators", "models", "onnx_exports")
MODULES = [m for m in source_modules() if not m.runs_on_import]
README_FIRST_EXAMPLE = ("TASKS", "CascadeConfig", "attach", "build_cascade", "make_llm")


def _tree(module: SourceModule) -> ast.Module:
    return ast.parse(module.path.read_text(), filename=str(module.path))


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest,
    each in natural order (digit runs compared as numbers)."""
    kind = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    parts = re.split(r"(\d+)", name)
    return kind, [int(p) if p.isdigit() else p for p in parts]


def _defined_names(tree: ast.Module) -> list[str]:
    """The public names a module's top level defines unconditionally: defs, classes, assignments."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def _static_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                return list(ast.literal_eval(node.value))
    return None


def _our_imports(tree: ast.Module) -> list[tuple[str, str | None]]:
    """Every ``from streamcascade... import name`` and ``import streamcascade...`` in a module,
    those inside functions included (they run only when called, so importing misses them)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamcascade"):
            assert node.level == 0, "relative import"
            found += [(str(node.module), alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("streamcascade")]
    return found


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_module_has_the_names_it_declares(module: SourceModule) -> None:
    tree = _tree(module)
    imported = importlib.import_module(module.name)
    assert Path(str(imported.__file__)) == module.path
    missing = [n for n in _defined_names(tree) if not hasattr(imported, n)]
    assert not missing, f"{module}: defines {missing} but has no such attributes"
    names = _static_all(tree)
    if names is not None:
        assert names == sorted(names, key=_isort_key), f"{module}: __all__ is not sorted"
        assert len(names) == len(set(names)), f"{module}: __all__ repeats a name"
        unresolved = [n for n in names if not hasattr(imported, n)]
        assert not unresolved, f"{module}: __all__ lists {unresolved}, which it does not have"


@pytest.mark.parametrize("module", source_modules(), ids=str)
def test_module_imports_only_names_that_exist(module: SourceModule) -> None:
    broken = []
    for source, name in _our_imports(_tree(module)):
        try:
            target = importlib.import_module(source)
        except ImportError as exc:
            broken.append(f"{source}: {exc}")
            continue
        if name is not None and not hasattr(target, name):
            try:  # ``from package import submodule``
                importlib.import_module(f"{source}.{name}")
            except ImportError:
                broken.append(f"{source}.{name}")
    assert not broken, f"{module} imports what does not exist: {broken}"


def test_every_source_package_is_installed() -> None:
    declared = {folder.resolve(): package for package, folder in package_dirs().items()}
    folders = {p.parent.resolve() for d in SOURCE_DIRS for p in (REPO / d).rglob("__init__.py")}
    undeclared = sorted(str(f.relative_to(REPO)) for f in folders if f not in declared)
    assert not undeclared, f"add these to [tool.setuptools] in pyproject.toml: {undeclared}"


# -- the package root ---------------------------------------------------------------------------


def _type_checking_imports() -> dict[str, str]:
    """Each name the root imports for type checkers, and the module it comes from."""
    tree = ast.parse((REPO / "plugin" / "__init__.py").read_text())
    homes: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module
                homes.update({alias.name: stmt.module for alias in stmt.names})
    return homes


def test_root_exports_are_sorted_and_typed() -> None:
    names = streamcascade.__all__
    assert names == sorted(names, key=_isort_key)
    assert len(names) == len(set(names))
    # Type checkers see the public names through the TYPE_CHECKING imports: the same set.
    assert set(_type_checking_imports()) | {"__version__"} == set(names)
    assert set(names) <= set(dir(streamcascade))


@pytest.mark.parametrize("name", sorted(_type_checking_imports()))
def test_root_name_is_the_object_at_its_home(name: str) -> None:
    home = importlib.import_module(_type_checking_imports()[name])
    assert getattr(streamcascade, name) is getattr(home, name)


def test_root_refuses_unknown_names() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        streamcascade.no_such_name  # noqa: B018


def test_root_attach_stays_the_function_after_its_module_is_imported() -> None:
    # A fresh interpreter, so that the submodule is imported before the public name is looked up.
    probe = (
        "import streamcascade.attach, inspect; from streamcascade import attach; "
        "print(inspect.isfunction(attach), inspect.ismodule(streamcascade.attach))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from streamcascade import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(streamcascade.__all__)


def _readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_root_covers_the_readme_first_example() -> None:
    assert set(README_FIRST_EXAMPLE) <= set(streamcascade.__all__)
    blocks = _readme_python_blocks()
    assert blocks, "README.md has no python example"
    first = ast.parse(blocks[0])
    used = [
        alias.name
        for node in ast.walk(first)
        if isinstance(node, ast.ImportFrom) and node.module == "streamcascade"
        for alias in node.names
    ]
    assert used, "the README's first example does not import from streamcascade"
    assert set(used) <= set(streamcascade.__all__)
    # Its calls of the public API bind to the real signatures.
    for node in ast.walk(first):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in used:
            target = getattr(streamcascade, node.func.id)
            keywords = {k.arg: None for k in node.keywords if k.arg is not None}
            inspect.signature(target).bind(*node.args, **keywords)


def test_readme_imports_only_public_or_existing_names() -> None:
    for block in _readme_python_blocks():
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamcascade"):
                source: ModuleType = importlib.import_module(str(node.module))
                for alias in node.names:
                    assert hasattr(source, alias.name), f"README: {node.module}.{alias.name}"


# -- the installed layout and the CLI -----------------------------------------------------------


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
