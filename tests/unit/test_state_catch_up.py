"""A worker catching up on the state topic loads the newest state that loads, not only the newest.

The newest record may be signed and still not load (its fine-tuned snapshot altered after it was
made, say): the worker then falls back to the next newest, rather than serve a model from nothing
until the learner publishes again.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

import streamcascade.operators.state_store as state_store
from streamcascade.errors import ModelStateError
from streamcascade.operators.state_store import Snapshot, StateSigner, StateWatcher

KEY = "k" * 32


class FakeConsumer:
    """aiokafka's consumer as the watcher uses it, over one partition's records."""

    records: ClassVar[list[bytes]] = []

    def __init__(self, **_config: Any) -> None:
        self._position = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, _tps: list[Any]) -> None: ...

    async def seek_to_beginning(self, *_tps: Any) -> None:
        self._position = 0

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: len(self.records) for tp in tps}

    async def position(self, _tp: Any) -> int:
        return self._position

    async def getmany(self, timeout_ms: int) -> dict[str, list[Any]]:
        if self._position >= len(self.records):
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch = [type("Record", (), {"value": value, "offset": offset})
                 for offset, value in enumerate(self.records[self._position:], self._position)]
        self._position = len(self.records)
        return {"tp": batch}


@pytest.fixture
def fake_topic(monkeypatch: pytest.MonkeyPatch) -> type[FakeConsumer]:
    import aiokafka

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(state_store, "partition_counts", lambda _bootstrap: {"state": 1})
    return FakeConsumer


async def catch_up(records: list[bytes]) -> tuple[StateWatcher, list[int], list[str]]:
    applied: list[int] = []
    refused: list[str] = []

    def apply(snapshot: Snapshot) -> None:
        if snapshot.payload == b"altered":
            raise ModelStateError("fine-tuned stage snapshot 3: the ONNX graph does not match")
        applied.append(snapshot.version)

    FakeConsumer.records = records
    watcher = StateWatcher("unused:9092", "state", StateSigner(KEY), apply, refused.append)
    await watcher.start(timeout=5)
    await watcher.stop()
    return watcher, applied, refused


async def test_a_newest_state_that_does_not_load_falls_back_to_the_next(
    fake_topic: type[FakeConsumer],
) -> None:
    signer = StateSigner(KEY)
    watcher, applied, refused = await catch_up(
        [signer.sign(1, b"v1"), signer.sign(2, b"v2"), signer.sign(9, b"altered")])
    assert applied == [2] and watcher.version == 2
    assert refused == ["fine-tuned stage snapshot 3: the ONNX graph does not match"]


async def test_catching_up_loads_only_the_newest_of_many(
    fake_topic: type[FakeConsumer],
) -> None:
    signer = StateSigner(KEY)
    versions = [5, 1, 8, 3, 7, 2, 6]
    watcher, applied, refused = await catch_up([signer.sign(v, b"ok") for v in versions])
    assert applied == [8] and watcher.version == 8 and refused == []
