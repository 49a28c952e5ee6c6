"""Training commands (train, eval, sample, plot) -- registered on the CLI app."""

from __future__ import annotations


def register(app) -> None:
    """Add the training commands to ``app``."""
