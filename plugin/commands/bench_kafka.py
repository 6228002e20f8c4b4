"""``streamcascade bench kafka``."""

from __future__ import annotations

import click


@click.command("kafka")
def command() -> None:
    """Not built yet."""
    raise click.ClickException("bench kafka is not built yet")
