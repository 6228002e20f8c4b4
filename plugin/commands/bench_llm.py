"""``streamcascade bench llm``."""

from __future__ import annotations

import click


@click.command("llm")
def command() -> None:
    """Not built yet."""
    raise click.ClickException("bench llm is not built yet")
