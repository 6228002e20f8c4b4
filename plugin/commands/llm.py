"""``streamcascade llm``."""

from __future__ import annotations

import click


@click.group("llm")
def llm() -> None:
    """Not built yet."""
