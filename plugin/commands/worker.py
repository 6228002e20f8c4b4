"""``streamcascade worker`` and ``streamcascade demo``."""

from __future__ import annotations

import click


@click.command()
def worker() -> None:
    """Not built yet."""
    raise click.ClickException("worker is not built yet")


@click.command()
def demo() -> None:
    """Not built yet."""
    raise click.ClickException("demo is not built yet")
