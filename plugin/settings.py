"""All of streamcascade's configuration in one settings object.

Values come from, in order of precedence: explicit arguments (CLI flags), environment variables
prefixed ``STREAMCASCADE_`` (``STREAMCASCADE_BOOTSTRAP=host:9092``), then the defaults below.
Secrets are :class:`pydantic.SecretStr`, so they print as ``**********`` in logs and errors.

The operator's defaults are not written here but read from where the operator keeps them
(:data:`streamcascade.operators.options.DEFAULTS`, the codec's, the state topic's limit), and the
settings build what the operator takes: :meth:`Settings.operator_options`,
:meth:`Settings.record_codec` and :meth:`Settings.operator_topics`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamcascade.models.llm.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LLM_FAILURE,
    DEFAULT_TIMEOUT_S,
    LLMFailureMode,
)
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.options import DEFAULTS, STATE_MAX_BYTES, OperatorOptions
from streamcascade.operators.topics import OperatorTopics

_CODEC = RecordCodec()  # (its defaults)


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
    #: A live LLM server: events asked at once, seconds one request may take (an answer is a
    #: label of a few tokens), seconds an event may spend asking, retries included (unset: three
    #: request timeouts), and whether a request slower than the server's recent 95th percentile
    #: gets a hedge (the same request again; the first answer wins).
    llm_concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=4096)
    llm_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    llm_deadline_s: float | None = Field(None, gt=0)
    llm_hedge: bool = True
    #: What becomes of an event the LLM cannot answer: ``degrade`` (the best earlier stage
    #: answers, marked degraded), ``dead-letter`` or ``wait`` (ask again until it answers).
    on_llm_failure: LLMFailureMode = DEFAULT_LLM_FAILURE

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
    id_field: str = _CODEC.id_field
    text_field: str = _CODEC.text_field
    label_field: str = _CODEC.label_field
    source_field: str = _CODEC.source_field
    #: Micro-batches: at most this many events, waiting at most this long for them.
    batch_size: int = Field(DEFAULTS.batch_size, ge=1, le=10_000)
    batch_time_s: float = Field(DEFAULTS.batch_time_s, gt=0, le=60)
    #: Records larger than this become ``oversized_payload`` dead letters.
    max_payload_bytes: int = Field(_CODEC.max_bytes, ge=64)
    #: How long an event waits for its feedback (and feedback for its event), and how many wait.
    decision_ttl_s: float = Field(DEFAULTS.decision_ttl_s, gt=0)
    decision_log_size: int = Field(DEFAULTS.decision_log_size, ge=1)
    #: The learner: demonstrations per update, and the least time between published states.
    learn_batch_size: int = Field(DEFAULTS.learn_batch_size, ge=1)
    learn_batch_time_s: float = Field(DEFAULTS.learn_batch_time_s, gt=0)
    publish_interval_s: float = Field(DEFAULTS.publish_interval_s, gt=0)
    #: Share of events held back to judge each model version before it is published.
    holdout_share: float = Field(DEFAULTS.holdout_share, ge=0, le=1)
    #: The largest model state record (the state topic's ``max.message.bytes``).
    state_max_bytes: int = Field(STATE_MAX_BYTES, ge=1024 * 1024)
    #: The fleet's shared HMAC-SHA256 key for model state; required with a state topic.
    state_signing_key: SecretStr | None = None
    #: Serve Prometheus metrics on this port (``None``: not served).
    metrics_port: int | None = None
    #: Longest time (ms) the broker may hold a fetch of the operator's consumer open waiting
    #: for records. Faust fixes it at 1,500 ms; with several topics on one broker a fetch of the
    #: quiet ones held that long delays the input's records behind it.
    fetch_max_wait_ms: int = Field(DEFAULTS.fetch_max_wait_ms, ge=1, le=1500)
    #: Exempt the objects alive once the worker has loaded its model state from the cyclic
    #: garbage collector (``gc.freeze``), so that its full collections stop pausing the event loop
    #: for tens of ms.
    freeze_heap: bool = DEFAULTS.freeze_heap
    #: How soon the group notices a worker that died without leaving (kill -9, a lost host):
    #: its partitions move to the others after this many seconds.
    session_timeout_s: float = Field(10.0, ge=6, le=300)
    #: Create the topics the operator owns where they are missing, at start (output and
    #: feedback with the input's partition count, dead letters, the compacted state topic, the
    #: demonstrations topic). When off, a missing one stops the start with an error that says
    #: how to create it.
    create_topics: bool = DEFAULTS.create_topics
    #: At start, wait for an input topic that does not exist (the log says so every few
    #: seconds) rather than stop with an error.
    wait_for_input: bool = DEFAULTS.wait_for_input
    #: Seconds between two one-line summaries of the operator's work in its log (0: none).
    summary_interval_s: float = Field(DEFAULTS.summary_interval_s, ge=0)

    # -- what the operator takes -------------------------------------------------------------
    def operator_options(self) -> OperatorOptions:
        """The operator's batching, join and learning options."""
        return OperatorOptions(
            batch_size=self.batch_size,
            batch_time_s=self.batch_time_s,
            learn_batch_size=self.learn_batch_size,
            learn_batch_time_s=self.learn_batch_time_s,
            publish_interval_s=self.publish_interval_s,
            holdout_share=self.holdout_share,
            decision_ttl_s=self.decision_ttl_s,
            decision_log_size=self.decision_log_size,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            freeze_heap=self.freeze_heap,
            create_topics=self.create_topics,
            wait_for_input=self.wait_for_input,
            summary_interval_s=self.summary_interval_s,
        )

    def record_codec(self) -> RecordCodec:
        """How the operator reads and writes records: field names and the size limit."""
        return RecordCodec(
            id_field=self.id_field,
            text_field=self.text_field,
            label_field=self.label_field,
            source_field=self.source_field,
            max_bytes=self.max_payload_bytes,
        )

    def dead_letter_topic(self, source: str, named: str | None = None) -> str:
        """The dead-letter topic: the one ``named``, else the ``dlq_topic`` setting, else
        ``<source>-dead-letters`` (a dead letter is never only logged)."""
        return named or self.dlq_topic or f"{source}-dead-letters"

    def operator_topics(self, partitions: int = 1) -> OperatorTopics:
        """The topics these settings name (those of ``streamcascade worker``); ``partitions``
        of the input where a harness creates it."""
        return OperatorTopics(
            source=self.input_topic,
            sink=self.output_topic,
            feedback=self.feedback_topic,
            dlq=self.dead_letter_topic(self.input_topic),
            state=self.state_topic,
            partitions=partitions,
            state_max_bytes=self.state_max_bytes,
        )
