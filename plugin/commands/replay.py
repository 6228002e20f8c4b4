"""``streamcascade replay``."""

from __future__ import annotations

import click


@click.group("replay")
def replay() -> None:
    """Not built yet."""
