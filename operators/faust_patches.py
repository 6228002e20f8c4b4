"""Where Faust and aiokafka, as they are, do not fit a low-latency operator: the mends.

Each mend is small, says what it changes and why, and is applied once however many operators a
process installs: :func:`low_latency_fetch` (for one app), :func:`back_off_failed_metadata_updates`
(process-wide, aiokafka's own setting), and :func:`allow_records_of` (the app's producer).
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

#: Fetch wait per app id, read by the patched consumer factory below.
_FETCH_MAX_WAIT_MS: dict[str, int] = {}


def low_latency_fetch(app: Any, max_wait_ms: int) -> None:
    """Make the app's Kafka consumer wait at most ``max_wait_ms`` for a fetch to fill.

    Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to
    change it. With several topics on one broker that is a latency trap: while the input's
    records are being processed, the next fetch asks only for the quiet topics (feedback,
    demonstrations), the broker holds it for the full wait, and input records that arrive
    meanwhile wait too, up to the full wait each. Faust offers no hook, so this wraps its consumer
    factory, for this app only, and sets aiokafka's wait before the consumer starts.
    """
    from faust.transport.drivers import aiokafka as driver

    _FETCH_MAX_WAIT_MS[app.conf.id] = int(max_wait_ms)
    factory = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(factory, "_streamcascade", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = factory(self, transport)
        wait = _FETCH_MAX_WAIT_MS.get(self.app.conf.id)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    create_worker_consumer._streamcascade = True  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def back_off_failed_metadata_updates() -> None:
    """Wait aiokafka's ``retry_backoff_ms`` after a failed cluster metadata update.

    While the broker is down, aiokafka's (0.14) producer and fetcher ask for a metadata update as
    soon as the last one failed, and a refused connection fails at once: a tight loop that burns
    the worker's CPU and logs two errors per round, thousands of lines a second through a broker
    restart (``test_operator_broker_restart``). With the wait, a round takes at least the backoff
    (100 ms by default). The patch is process-wide: it is the client's own setting, applied where
    aiokafka forgot it.
    """
    from aiokafka.client import AIOKafkaClient

    update = getattr(AIOKafkaClient, "_metadata_update", None)
    if update is None or getattr(update, "_streamcascade", False):
        return  # (a private method: another aiokafka may not have it; then nothing to mend)

    async def metadata_update(self: Any, *args: Any, **kwargs: Any) -> Any:
        updated = await update(self, *args, **kwargs)
        if updated is False:
            await asyncio.sleep(getattr(self, "_retry_backoff", 0.1))
        return updated

    metadata_update._streamcascade = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = metadata_update


def allow_records_of(app: Any, size: int) -> None:
    """Let the app's producer send records of ``size`` bytes (a model state, a dead letter).

    The producer reads its limit when the app starts, so raising it while installing is in time;
    Faust warns on reading the setting (it was set after the app was made), hence the quiet.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if app.conf.producer_max_request_size < size:
            app.conf.producer_max_request_size = size
