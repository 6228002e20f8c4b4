"""``streamcascade onnx``."""

from __future__ import annotations

import click


@click.group("onnx")
def onnx() -> None:
    """Not built yet."""
