"""What a worker checks and prepares as it starts, before its agents handle a record.

In order, once per worker, the same for ``streamcascade.attach`` and ``streamcascade worker``:

1. The topics (:func:`~.topics.prepare_topics`): the input exists (with ``wait_for_input``, it is
   waited for, and the log says so every few seconds); the topics the operator owns are created
   where missing, as they must be (unless ``create_topics`` is off); the feedback topic is
   co-partitioned with the input. Every problem is told in one error, each with the command
   line that fixes it. This runs before the app's consumer subscribes (:func:`gated_topic`): a
   consumer that subscribes to a missing topic has the broker create it with the broker's
   default partition count (where ``auto.create.topics.enable`` is on), and is assigned it only
   at its next metadata refresh.
2. The dead-letter topic's record limit: one made elsewhere may take less than
   :data:`~streamcascade.operators.dead_letters.MAX_BYTES`, and dead letters are then cut to fit.
   So may the model-state topic's: a state over its limit cannot be published, which a warning
   says now rather than the broker's bare refusal at the first large state.
3. The newest model state of the fleet, loaded and then followed (serving without it would roll
   the fleet's model back).

A check that fails stops the worker, saying why; nothing waits without saying so.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streamcascade.errors import ConfigurationError
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.faust_io import bootstrap_of
from streamcascade.operators.operator import CascadeOperator
from streamcascade.operators.options import OperatorOptions
from streamcascade.operators.state_store import StateWatcher
from streamcascade.operators.topics import (
    OperatorTopics,
    partition_counts,
    prepare_topics,
    topic_max_bytes,
)

log = logging.getLogger(__name__)

#: How often a worker waiting for its input topic looks for it, and how often it says so.
INPUT_POLL_S = 1.0
WAITING_LOG_S = 5.0


class StartUp:
    """The start-up of one operator in one app: run once, by whichever asks first (the gate
    before the app's consumer subscribes, or the app's start task); the others wait for it."""

    def __init__(self, app: Any, topics: OperatorTopics, options: OperatorOptions,
                 operator: CascadeOperator, watcher: StateWatcher | None) -> None:
        self.app = app
        self.topics = topics
        self.options = options
        self.operator = operator
        self.watcher = watcher
        self._lock = asyncio.Lock()
        self._topics_ready: bool | None = None

    async def topics_ready(self) -> bool:
        """Steps 1 and 2 (once); whether they passed. Where they did not, the app is crashed
        with the reason, which is logged."""
        async with self._lock:
            if self._topics_ready is None:
                self._topics_ready = await self._prepare_topics()
            return self._topics_ready

    async def run(self) -> bool:
        """Every step; whether the worker may serve."""
        if not await self.topics_ready():
            return False
        if self.watcher is not None:
            try:
                await self.watcher.start()
            except Exception as exc:
                log.error("cannot read the model state topic %s: %s", self.topics.state, exc)
                await self.app.crash(exc)
                return False
        return True

    async def _prepare_topics(self) -> bool:
        bootstrap = bootstrap_of(self.app)
        loop = asyncio.get_running_loop()
        try:
            if self.options.wait_for_input:
                await wait_for_topic(bootstrap, self.topics.source)
            counts = await loop.run_in_executor(None, functools.partial(
                prepare_topics, bootstrap, self.topics, create=self.options.create_topics))
            if self.topics.dlq:
                self.operator.dead_letter_max_bytes = await dead_letter_limit(bootstrap,
                                                                              self.topics.dlq)
            if self.topics.state:
                await state_limit(bootstrap, self.topics.state, self.topics.state_max_bytes)
        except ConfigurationError as refused:  # say why, and stop
            log.error("%s", refused)
            await self.app.crash(refused)
            return False
        log.info("topics ready on %s: %s", bootstrap,
                 ", ".join(f"{name} ({n} partitions)" for name, n in counts.items()))
        return True


async def wait_for_topic(bootstrap: str, topic: str) -> None:
    """Return once ``topic`` exists; until then, say so every :data:`WAITING_LOG_S` seconds."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    said = -WAITING_LOG_S
    while topic not in await loop.run_in_executor(None, partition_counts, bootstrap):
        waited = time.monotonic() - started
        if waited - said >= WAITING_LOG_S:
            log.warning("waiting for input topic %r on %s (%.0f s so far): the operator starts "
                        "once it exists", topic, bootstrap, waited)
            said = waited
        await asyncio.sleep(INPUT_POLL_S)
    if time.monotonic() - started > INPUT_POLL_S:
        log.info("input topic %r exists now: starting", topic)


async def dead_letter_limit(bootstrap: str, topic: str) -> int:
    """The largest dead letter ``topic`` takes (warned about when under
    :data:`~streamcascade.operators.dead_letters.MAX_BYTES`)."""
    limit = await asyncio.get_running_loop().run_in_executor(None, topic_max_bytes, bootstrap,
                                                             topic)
    if limit is None or limit >= dl.MAX_BYTES:
        return dl.MAX_BYTES
    log.warning("dead-letter topic %s takes records of at most %d bytes: originals over about "
                "%d bytes are cut in their dead letters", topic, limit, dl.original_limit(limit))
    return limit


async def state_limit(bootstrap: str, topic: str, state_max_bytes: int) -> int | None:
    """The largest record the model-state ``topic`` takes, warned about when under
    ``state_max_bytes``."""
    limit = await asyncio.get_running_loop().run_in_executor(None, topic_max_bytes, bootstrap,
                                                             topic)
    if limit is not None and limit < state_max_bytes:
        log.warning("model-state topic %s takes records of at most %d bytes, under the %d of "
                    "state_max_bytes: a larger model state (a fine-tuned stage's can be tens of "
                    "MB) cannot be published, and the learner stops. Raise the topic's "
                    "max.message.bytes to %d", topic, limit, state_max_bytes, state_max_bytes)
    return limit


def gated_topic(app: Any, name: str, gate: Callable[[], Awaitable[bool]], **kwargs: Any) -> Any:
    """A topic of raw bytes (as :func:`~.faust_io.raw_topic`) that Faust declares only once
    ``gate()`` passed.

    Faust's conductor declares an app's internal topics just before its consumer subscribes to
    the app's topics, and waits for each: with one internal topic of the operator made this
    way, the operator's start-up checks run before any of its topics is subscribed to. Where
    the gate fails (it crashed the app), the declaration never returns, so the consumer never
    subscribes; the app's stop cancels it.
    """
    return _gated_class(app.conf.Topic)(
        app, topics=[name], key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", gate=gate, **kwargs)


@functools.cache
def _gated_class(base: type) -> type:
    class GatedTopic(base):
        def __init__(self, *args: Any, gate: Callable[[], Awaitable[bool]],
                     **kwargs: Any) -> None:
            self._gate = gate
            super().__init__(*args, **kwargs)

        def _clone_args(self) -> dict[str, Any]:  # (Faust subscribes a clone of the topic)
            return {**super()._clone_args(), "gate": self._gate}

        async def maybe_declare(self) -> None:
            if not await self._gate():
                await asyncio.Event().wait()
            await super().maybe_declare()

    return GatedTopic


def refresh_metadata_often(app: Any, seconds: float) -> None:
    """Make the app's consumer refresh its cluster metadata at least every ``seconds``.

    A consumer is assigned a topic it subscribes to only once its metadata lists the topic;
    Faust's consumer refreshes every five minutes, so an input topic made after the worker
    subscribed would wait that long. Set before the app starts (its consumer reads it then);
    only ever lowered. Faust warns on setting a value after the app was made, hence the quiet.
    """
    import warnings

    wanted = int(seconds * 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if app.conf.consumer_metadata_max_age_ms > wanted:
            app.conf.consumer_metadata_max_age_ms = wanted
