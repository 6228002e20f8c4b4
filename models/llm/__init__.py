"""LLM backends: the last, most expensive stage of the cascade."""

from streamcascade.models.llm.base import LLMAnswer, LLMBackend

__all__ = ["LLMAnswer", "LLMBackend"]
