"""All of streamcascade's configuration in one settings object.

Values come from, in order of precedence: explicit arguments (CLI flags), environment variables
prefixed ``STREAMCASCADE_`` (``STREAMCASCADE_BOOTSTRAP=host:9092``), then the defaults below.
Secrets are :class:`pydantic.SecretStr`, so they print as ``**********`` in logs and errors.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamcascade.operators.batching import DEFAULT_BATCH_TIME_S
from streamcascade.operators.learner_agent import DEFAULT_PUBLISH_INTERVAL_S


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

    # -- the Kafka operator (``streamcascade worker``, ``streamcascade.attach``) ---------------
    #: Faust app id, which is also the consumer group: workers with the same id share the work.
    app_id: str = "streamcascade"
    #: Topics: events in, answers out, labels in (and the LLM's answers out), dead letters out,
    #: model state (compacted). The feedback topic must have the input's partition count.
    input_topic: str = "events"
    output_topic: str = "predictions"
    feedback_topic: str | None = "feedback"
    dlq_topic: str | None = "dead-letters"
    state_topic: str | None = "model-state"
    #: Field names of the event id and text in input records (and of feedback records).
    id_field: str = "id"
    text_field: str = "text"
    label_field: str = "label"
    source_field: str = "source"
    #: Micro-batches: at most this many events, waiting at most this long for them.
    batch_size: int = Field(100, ge=1, le=10_000)
    batch_time_s: float = Field(DEFAULT_BATCH_TIME_S, gt=0, le=60)
    #: Records larger than this become ``oversized_payload`` dead letters.
    max_payload_bytes: int = Field(1_000_000, ge=64)
    #: How long an event waits for its feedback (and feedback for its event), and how many wait.
    decision_ttl_s: float = Field(600.0, gt=0)
    decision_log_size: int = Field(100_000, ge=1)
    #: The learner: demonstrations per update, and the least time between published states.
    learn_batch_size: int = Field(500, ge=1)
    learn_batch_time_s: float = Field(0.5, gt=0)
    publish_interval_s: float = Field(DEFAULT_PUBLISH_INTERVAL_S, gt=0)
    #: The largest model state record (the state topic's ``max.message.bytes``).
    state_max_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    #: The fleet's shared HMAC-SHA256 key for model state; required with a state topic.
    state_signing_key: SecretStr | None = None
    #: Serve Prometheus metrics on this port (``None``: not served).
    metrics_port: int | None = None
    #: Longest time (ms) the broker may hold a fetch of the operator's consumer open waiting
    #: for records. Faust fixes it at 1,500 ms; with several topics on one broker a fetch of the
    #: quiet ones held that long delays the input's records behind it.
    fetch_max_wait_ms: int = Field(10, ge=1, le=1500)
    #: Exempt the objects alive once the worker has loaded its model state from the cyclic
    #: garbage collector (``gc.freeze``), so that its full collections stop pausing the event loop
    #: for tens of ms.
    freeze_heap: bool = True
    #: How soon the group notices a worker that died without leaving (kill -9, a lost host):
    #: its partitions move to the others after this many seconds.
    session_timeout_s: float = Field(10.0, ge=6, le=300)
