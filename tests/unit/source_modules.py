"""The package's modules as pyproject.toml declares them, found without importing any of them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SourceModule:
    name: str  # the import name, e.g. ``streamcascade.models.policy``
    path: Path

    @property
    def runs_on_import(self) -> bool:
        """A ``__main__`` module runs the program when imported: never import it in a test."""
        return self.name.rpartition(".")[2] == "__main__"

    def __str__(self) -> str:
        return self.name


def package_dirs() -> dict[str, Path]:
    """Each package pyproject.toml installs, and the folder it is installed from."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    return {package: REPO / mapping[package] for package in setuptools["packages"]}


def source_modules() -> list[SourceModule]:
    found = []
    for package, folder in package_dirs().items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found.append(SourceModule(name, path))
    return sorted(found, key=lambda m: m.name)
