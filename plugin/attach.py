"""``streamcascade.attach``: the cascade operator in a user's own Faust app, in a few lines.

>>> import faust                                                     # doctest: +SKIP
>>> app = faust.App("reviews", broker="kafka://localhost:9092")      # doctest: +SKIP
>>> streamcascade.attach(app, cascade, source="reviews", sink="review-sentiment",
...                      feedback="review-labels", dlq="review-dead-letters",
...                      state_topic="review-model-state")           # doctest: +SKIP

The app's id is the consumer group, so every worker started from the same app shares the input's
partitions and serves the one model state that the fleet's learner publishes.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from streamcascade.errors import ConfigurationError
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.install import (
    OperatorHandle,
    OperatorOptions,
    OperatorTopics,
    install,
)
from streamcascade.operators.state_store import StateSigner
from streamcascade.settings import Settings


def options_from(settings: Settings) -> OperatorOptions:
    """The operator's batching, join and learning options from the settings."""
    return OperatorOptions(
        batch_size=settings.batch_size,
        batch_time_s=settings.batch_time_s,
        learn_batch_size=settings.learn_batch_size,
        learn_batch_time_s=settings.learn_batch_time_s,
        publish_interval_s=settings.publish_interval_s,
        decision_ttl_s=settings.decision_ttl_s,
        decision_log_size=settings.decision_log_size,
        state_max_bytes=settings.state_max_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        freeze_heap=settings.freeze_heap,
    )


def codec_from(settings: Settings) -> RecordCodec:
    return RecordCodec(
        id_field=settings.id_field,
        text_field=settings.text_field,
        label_field=settings.label_field,
        source_field=settings.source_field,
        max_bytes=settings.max_payload_bytes,
    )


def dead_letter_topic(settings: Settings, source: str, named: str | None = None) -> str:
    """The dead-letter topic: the one ``named``, else the ``dlq_topic`` setting, else
    ``<source>-dead-letters`` (a dead letter is never only logged)."""
    return named or settings.dlq_topic or f"{source}-dead-letters"


def attach(
    app: Any,
    cascade: Any,
    *,
    source: str,
    sink: str,
    feedback: str | None = None,
    dlq: str | None = None,
    state_topic: str | None = None,
    signing_key: SecretStr | str | bytes | None = None,
    settings: Settings | None = None,
    metrics_port: int | None = None,
) -> OperatorHandle:
    """Install the cascade operator into ``app``.

    Parameters
    ----------
    app
        A ``faust.App``; its id is the consumer group of the operator's agents.
    cascade
        A :class:`streamcascade.models.cascade.Cascade` (``build_cascade(...)``).
    source, sink
        The input topic (JSON events) and the output topic (JSON answers keyed by event id).
    feedback
        Labels ``{id, label, source}``, keyed by event id, with as many partitions as ``source``;
        the operator also writes the LLM's answers there. Without it nothing is learned.
    dlq
        Dead letters (default: the ``dlq_topic`` setting, else ``<source>-dead-letters``; a dead
        letter is never only logged). Created at start if missing.
    state_topic
        The compacted model-state topic; needs ``signing_key`` (or the setting
        ``state_signing_key``). Without it each worker learns alone and nothing survives a restart.
    settings
        Field names, batch sizes, limits; ``Settings()`` (environment) when None.
    metrics_port
        Serve Prometheus metrics on this port (default: the ``metrics_port`` setting).

    Returns
    -------
    OperatorHandle
        The installed parts (metrics, decision log, learner), for inspection.
    """
    settings = settings or Settings()
    key = signing_key if signing_key is not None else settings.state_signing_key
    if state_topic and key is None:
        raise ConfigurationError(
            "a state topic needs a signing key: pass signing_key= or set "
            "STREAMCASCADE_STATE_SIGNING_KEY (the same secret on every worker)"
        )
    signer = StateSigner(key) if state_topic and key is not None else None
    dlq = dead_letter_topic(settings, source, dlq)
    topics = OperatorTopics(source, sink, feedback, dlq, state_topic)
    handle = install(app, cascade, topics, codec=codec_from(settings), signer=signer,
                     options=options_from(settings))
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port:
        handle.metrics.serve(port)
    return handle
