"""Model state on a compacted Kafka topic: signed, versioned, and loaded by every worker.

A snapshot is the cascade's own data-only state bytes inside a signed envelope::

    b"SCSIG1" | HMAC-SHA256 (32 bytes) | header length (uint32 LE) | header JSON | state bytes

The MAC covers everything after it and is checked, in constant time, before a single byte of the
header or the state is parsed: a record without the marker, with a wrong MAC, or signed with
another key is refused with :class:`~streamcascade.errors.ModelStateError`. The state bytes are
themselves a data-only format (never pickle), so even a leaked key cannot make a worker run code.

All snapshots share one record key, so compaction keeps the newest; versions only go up, and a
worker ignores any snapshot whose version is not above the one it serves.

>>> signer = StateSigner(b"k" * 32)
>>> blob = signer.sign(3, b"weights", {"task": "imdb"})
>>> snap = signer.verify(blob)
>>> snap.version, snap.payload, snap.meta["task"]
(3, b'weights', 'imdb')
>>> StateSigner(b"x" * 32).verify(blob)
Traceback (most recent call last):
...
streamcascade.models.errors.ModelStateError: model state signature does not match: refused
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.operators.options import STATE_MAX_BYTES
from streamcascade.operators.topics import partition_counts

log = logging.getLogger(__name__)

MAGIC = b"SCSIG1"
_MAC_LEN = 32
#: Every snapshot is written under this key, so that compaction keeps only the newest.
STATE_KEY = b"model-state"
#: A signing key shorter than this is refused: HMAC is only as strong as its key.
MIN_KEY_BYTES = 16
#: Verified snapshots a worker keeps while it catches up, newest first: if the newest cannot be
#: loaded (altered after it was signed, say), it falls back to the next rather than start from
#: nothing. Bounded, as each may be tens of MB.
CATCH_UP_CANDIDATES = 3


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A verified model state: its version, the cascade's state bytes, and descriptive metadata."""

    version: int
    payload: bytes
    meta: dict[str, Any] = field(default_factory=dict)


def _key_bytes(key: SecretStr | str | bytes) -> bytes:
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"the state signing key must be at least {MIN_KEY_BYTES} bytes long"
        )
    return raw


class StateSigner:
    """Signs model state with HMAC-SHA256 and verifies it before anything reads it.

    Parameters
    ----------
    key
        The shared secret of the fleet (every worker and the learner hold the same one).
    """

    def __init__(self, key: SecretStr | str | bytes) -> None:
        self._key = _key_bytes(key)

    def __repr__(self) -> str:  # never show the key
        return "StateSigner(key=**********)"

    def sign(self, version: int, payload: bytes, meta: dict[str, Any] | None = None) -> bytes:
        if version < 0:
            raise ValueError(f"a state version is not negative, got {version}")
        header = json.dumps(
            {"version": int(version), "created_at": time.time(), "meta": meta or {}},
            separators=(",", ":"),
        ).encode("utf-8")
        body = struct.pack("<I", len(header)) + header + payload
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return MAGIC + mac + body

    def verify(self, blob: bytes | None) -> Snapshot:
        """The snapshot in ``blob``; a :class:`ModelStateError` unless its signature is ours."""
        if not blob or not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _MAC_LEN + 4:
            raise ModelStateError("model state is not signed: refused")
        mac = blob[len(MAGIC) : len(MAGIC) + _MAC_LEN]
        body = blob[len(MAGIC) + _MAC_LEN :]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise ModelStateError("model state signature does not match: refused")
        (header_len,) = struct.unpack("<I", body[:4])
        try:
            header = json.loads(body[4 : 4 + header_len])
            version = int(header["version"])
            meta = dict(header.get("meta") or {})
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelStateError(f"signed model state has a bad header: {exc}") from None
        return Snapshot(version, bytes(body[4 + header_len :]), meta)


class StateWatcher:
    """Reads the state topic from its start, then follows it; applies each newer snapshot.

    It reads with a consumer outside any consumer group and assigned every partition of the
    topic, so that every worker sees every snapshot (a group would split them).

    Parameters
    ----------
    bootstrap, topic
        Where the snapshots are.
    signer
        Verifies each snapshot; refused ones are logged (without their bytes) and counted.
    apply
        Called with each verified snapshot whose version is above the last applied one.
    on_refused
        Called with the reason of each refused record (for a metric).
    max_bytes
        The largest snapshot the consumer fetches.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        signer: StateSigner,
        apply: Callable[[Snapshot], None],
        on_refused: Callable[[str], None] | None = None,
        max_bytes: int = STATE_MAX_BYTES,
        on_failure: Callable[[BaseException], Awaitable[Any]] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.signer = signer
        self.apply = apply
        self.on_refused = on_refused
        self.max_bytes = max_bytes
        self.on_failure = on_failure
        self.version = -1
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._failure: asyncio.Future[Any] | None = None

    def _verified(self, value: bytes | None) -> Snapshot | None:
        try:
            return self.signer.verify(value)
        except ModelStateError as exc:
            log.warning("refused a record on state topic %s: %s", self.topic, exc)
            if self.on_refused is not None:
                self.on_refused(str(exc))
            return None

    def _offer(self, value: bytes | None) -> None:
        snapshot = self._verified(value)
        if snapshot is not None:
            self._apply(snapshot)

    def _apply(self, snapshot: Snapshot) -> bool:
        """Apply ``snapshot`` if it is newer; False if it is newer and could not be loaded."""
        if snapshot.version > self.version:
            try:
                self.apply(snapshot)
            except ModelStateError as exc:  # signed by us, but for another cascade, or altered
                log.warning("could not load state version %d: %s", snapshot.version, exc)
                if self.on_refused is not None:
                    self.on_refused(str(exc))
                return False
            self.version = snapshot.version
        return True

    async def start(self, timeout: float = 60.0) -> None:
        """Read every snapshot up to the topic's current end, apply the newest that loads, then
        follow."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.max_bytes,
            fetch_max_bytes=self.max_bytes,
        )
        await consumer.start()
        self._consumer = consumer
        deadline = time.monotonic() + timeout
        n_partitions = 0
        while not n_partitions:
            loop = asyncio.get_running_loop()
            counts = await loop.run_in_executor(None, partition_counts, self.bootstrap)
            n_partitions = counts.get(self.topic, 0)
            if not n_partitions:
                if time.monotonic() > deadline:
                    await consumer.stop()
                    raise ModelStateError(f"state topic {self.topic!r} does not exist")
                await asyncio.sleep(0.5)
        tps = [TopicPartition(self.topic, p) for p in range(n_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        # Catch up: the newest snapshot that loads, before serving the first event (older ones,
        # which compaction has not removed yet, are verified, and only the newest few kept).
        newest: list[tuple[int, int, Snapshot]] = []  # a min-heap by version, then arrival
        arrived = 0
        while not await self._caught_up(tps, ends):
            if time.monotonic() > deadline:
                raise ModelStateError(f"timed out reading state topic {self.topic!r}")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    snapshot = self._verified(record.value)
                    if snapshot is None:
                        continue
                    arrived += 1
                    entry = (snapshot.version, arrived, snapshot)
                    if len(newest) < CATCH_UP_CANDIDATES:
                        heapq.heappush(newest, entry)
                    elif entry[:2] > newest[0][:2]:
                        heapq.heapreplace(newest, entry)
        for _, _, snapshot in sorted(newest, key=lambda e: e[:2], reverse=True):
            if self._apply(snapshot):
                break
        self._start_following()

    def _start_following(self) -> None:
        self._task = asyncio.ensure_future(self._follow())
        self._task.add_done_callback(self._stopped_following)

    def _stopped_following(self, task: asyncio.Task[None]) -> None:
        # A worker that silently stopped following would serve a stale model for good: say so,
        # and let the app stop (a supervisor restarts it, and it catches up at start).
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("stopped following state topic %s: %r", self.topic, exc)
        if self.on_failure is not None and exc is not None:
            self._failure = asyncio.ensure_future(self.on_failure(exc))

    async def _caught_up(self, tps: list[Any], ends: dict[Any, int]) -> bool:
        for tp in tps:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

    async def _follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    try:
                        self._offer(record.value)
                    except Exception as exc:  # one state that cannot load: follow on
                        log.exception("could not apply a record of state topic %s", self.topic)
                        if self.on_refused is not None:
                            self.on_refused(f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
