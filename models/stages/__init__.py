"""Cascade stages: each answers a batch with class probabilities and learns from labels."""

from streamcascade.models.stages.base import Stage

__all__ = ["Stage"]
