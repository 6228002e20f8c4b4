"""All of streamcascade's configuration in one settings object.

Values come from, in order of precedence: explicit arguments (CLI flags), environment variables
prefixed ``STREAMCASCADE_`` (``STREAMCASCADE_BOOTSTRAP=host:9092``), then the defaults below.
Secrets are :class:`pydantic.SecretStr`, so they print as ``**********`` in logs and errors.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "streamcascade"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMCASCADE_", extra="ignore")

    #: An existing Kafka cluster; when unset, the local launcher's broker is used.
    bootstrap: str | None = None
    #: Where downloaded broker jars, exported models and broker data live (git-ignored, per user).
    cache_dir: Path = Field(default_factory=default_cache_dir)
    #: API key of a live LLM server, if it needs one.
    llm_api_key: SecretStr | None = None
