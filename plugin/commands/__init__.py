"""Subcommands of the ``streamcascade`` CLI, one module per area."""
