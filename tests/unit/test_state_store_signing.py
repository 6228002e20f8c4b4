"""Signed model state: verified before it is read, refused when unsigned or tampered with."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.operators.state_store import MAGIC, Snapshot, StateSigner, StateWatcher

KEY = "a-fleet-secret-of-enough-bytes"


def test_round_trip_keeps_version_payload_and_meta() -> None:
    signer = StateSigner(SecretStr(KEY))
    blob = signer.sign(7, b"\x00state\xff", {"task": "hatespeech", "stages": ["hashed"]})
    snap = signer.verify(blob)
    assert (snap.version, snap.payload, snap.meta["stages"]) == (7, b"\x00state\xff", ["hashed"])


@pytest.mark.parametrize("blob", [b"", b"plain bytes", b"\x80\x04pickle", MAGIC + b"short"])
def test_unsigned_records_are_refused(blob: bytes) -> None:
    with pytest.raises(ModelStateError, match="not signed"):
        StateSigner(KEY).verify(blob)


def test_tampering_anywhere_is_refused() -> None:
    signer = StateSigner(KEY)
    blob = bytearray(signer.sign(3, b"payload-bytes", {}))
    for position in (len(MAGIC) + 1, len(MAGIC) + 40, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(ModelStateError, match="signature"):
            signer.verify(bytes(tampered))


def test_another_key_is_refused() -> None:
    blob = StateSigner(KEY).sign(1, b"x", {})
    with pytest.raises(ModelStateError, match="signature"):
        StateSigner(KEY + "-other").verify(blob)


def test_a_version_bump_without_the_key_is_refused() -> None:
    # An attacker who rewrites the header's version cannot re-sign it.
    blob = StateSigner(KEY).sign(1, b"x", {})
    forged = blob.replace(b'"version":1', b'"version":9')
    assert forged != blob
    with pytest.raises(ModelStateError):
        StateSigner(KEY).verify(forged)


def test_short_keys_are_refused_and_keys_never_print() -> None:
    with pytest.raises(ConfigurationError):
        StateSigner("short")
    assert KEY not in repr(StateSigner(KEY))


def test_watcher_applies_only_newer_verified_snapshots() -> None:
    signer = StateSigner(KEY)
    applied: list[Snapshot] = []
    refused: list[str] = []
    watcher = StateWatcher("unused:9092", "state", signer, applied.append, refused.append)
    for record in (signer.sign(2, b"v2"), b"unsigned", signer.sign(1, b"v1"),
                   StateSigner(KEY + "x").sign(5, b"forged"), signer.sign(3, b"v3")):
        watcher._offer(record)
    assert [s.version for s in applied] == [2, 3]
    assert len(refused) == 2 and watcher.version == 3


async def test_a_watcher_that_cannot_follow_says_so_and_a_bad_state_does_not_stop_it() -> None:
    """A worker that silently stopped following the state topic would serve a stale model for
    good: a state that raises while loading is refused and following goes on; the consumer
    failing ends it, and the failure is handed on (the operator crashes the app)."""
    import asyncio

    signer = StateSigner(KEY)
    refused: list[str] = []
    failures: list[BaseException] = []

    def apply(snapshot: Snapshot) -> None:
        if snapshot.payload == b"bug":
            raise RuntimeError("a loader bug")

    async def on_failure(exc: BaseException) -> None:
        failures.append(exc)

    class Consumer:
        def __init__(self) -> None:
            self.calls = 0

        async def getmany(self, timeout_ms: int) -> dict[str, list[object]]:
            self.calls += 1
            if self.calls == 1:
                record = type("R", (), {"value": signer.sign(1, b"bug")})
                return {"tp": [record, type("R", (), {"value": signer.sign(2, b"ok")})]}
            raise ConnectionError("the topic is gone")

    watcher = StateWatcher("unused:9092", "state", signer, apply, refused.append,
                           on_failure=on_failure)
    watcher._consumer = Consumer()
    watcher._start_following()
    await asyncio.sleep(0.05)
    assert watcher.version == 2 and refused == ["RuntimeError: a loader bug"]
    assert len(failures) == 1 and isinstance(failures[0], ConnectionError)
