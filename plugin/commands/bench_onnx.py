"""``streamcascade bench onnx``."""

from __future__ import annotations

import click


@click.command("onnx")
def command() -> None:
    """Not built yet."""
    raise click.ClickException("bench onnx is not built yet")
