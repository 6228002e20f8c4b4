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
from streamcascade.models.llm.base import ReportsHealth
from streamcascade.models.protocol import StreamModel
from streamcascade.models.training import ReportsTraining
from streamcascade.operators.runtime import OperatorRuntime
from streamcascade.operators.state_store import StateSigner
from streamcascade.operators.topics import OperatorTopics
from streamcascade.settings import Settings


def install_operator(
    app: Any,
    model: StreamModel,
    topics: OperatorTopics,
    settings: Settings,
    signing_key: SecretStr | str | bytes | None = None,
    metrics_port: int | None = None,
) -> OperatorRuntime:
    """Install the operator on ``topics`` into ``app``, configured by ``settings``; what
    :func:`attach` and ``streamcascade worker`` do. ``signing_key`` and ``metrics_port`` default
    to their settings."""
    key = signing_key if signing_key is not None else settings.state_signing_key
    if topics.state and key is None:
        raise ConfigurationError(
            "a state topic needs a signing key: pass signing_key= or set "
            "STREAMCASCADE_STATE_SIGNING_KEY (the same secret on every worker)"
        )
    signer = StateSigner(key) if topics.state and key is not None else None
    runtime = OperatorRuntime(app, model, topics, codec=settings.record_codec(), signer=signer,
                              options=settings.operator_options()).install()
    if isinstance(model, ReportsHealth):  # a cascade, reporting how its LLM is doing
        runtime.metrics.watch_llm(model)
    if isinstance(model, ReportsTraining):  # a cascade, whose stages may train in the background
        runtime.metrics.watch_training(model)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port:
        runtime.metrics.serve(port)
    return runtime


def attach(
    app: Any,
    cascade: StreamModel,
    *,
    source: str,
    sink: str,
    feedback: str | None = None,
    dlq: str | None = None,
    state_topic: str | None = None,
    signing_key: SecretStr | str | bytes | None = None,
    settings: Settings | None = None,
    metrics_port: int | None = None,
) -> OperatorRuntime:
    """Install the cascade operator into ``app``.

    When the app starts, before it subscribes, the operator checks its topics: the input must
    exist (or, with the setting ``wait_for_input``, is waited for); those it owns (``sink``,
    ``feedback``, ``dlq``, ``state_topic``, ``<app id>-demonstrations``) are created where
    missing, unless the setting ``create_topics`` is off. A problem stops the app with one error
    naming each topic and the command that creates it.

    Parameters
    ----------
    app
        A ``faust.App``; its id is the consumer group of the operator's agents.
    cascade
        The model to serve: a :class:`streamcascade.models.cascade.Cascade`
        (``build_cascade(...)``), or any :class:`~streamcascade.models.protocol.StreamModel`.
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
    OperatorRuntime
        The installed parts (metrics, decision log, learner, agents), for inspection.
    """
    settings = settings or Settings()
    topics = OperatorTopics(source, sink, feedback, settings.dead_letter_topic(source, dlq),
                            state_topic, state_max_bytes=settings.state_max_bytes)
    return install_operator(app, cascade, topics, settings, signing_key, metrics_port)
