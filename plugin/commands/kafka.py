"""``streamcascade kafka``."""

from __future__ import annotations

import click


@click.group("kafka")
def kafka() -> None:
    """Not built yet."""
