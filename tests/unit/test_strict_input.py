"""Strict where JSON readers differ: duplicate keys, NaN and Infinity, NUL in an id; a record key
that is not the id; metrics with no data read NaN, not 0."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from streamcascade.errors import RecordError
from streamcascade.models.types import LabelSet
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import RecordCodec
from streamcascade.operators.dead_letters import SourcePosition
from streamcascade.operators.key_check import KeyMismatchCheck
from streamcascade.operators.metrics import OperatorMetrics

LABELS = LabelSet(("hate", "noHate"))


@pytest.mark.parametrize("raw", [
    b'{"id": "1", "text": "kind words", "id": "2"}',
    b'{"id": "1", "text": "a", "text": "b"}',
    b'{"id": "1", "text": "a", "meta": {"x": 1, "x": 2}}',  # nested objects too
])
def test_duplicate_keys_in_an_event_are_a_dead_letter(raw: bytes) -> None:
    with pytest.raises(RecordError) as caught:
        RecordCodec().decode_event(raw)
    assert caught.value.reason == dl.DUPLICATE_KEYS
    assert "names the key" in caught.value.detail and "twice" in caught.value.detail


def test_duplicate_keys_in_feedback_are_a_dead_letter() -> None:
    raw = b'{"id": "1", "label": "hate", "label": "noHate"}'
    with pytest.raises(RecordError) as caught:
        RecordCodec().decode_feedback(raw, LABELS)
    assert caught.value.reason == dl.DUPLICATE_KEYS


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(constant: bytes) -> None:
    with pytest.raises(RecordError) as caught:
        RecordCodec().decode_event(b'{"id": "1", "text": "a", "score": ' + constant + b"}")
    assert caught.value.reason == dl.MALFORMED_JSON


def test_a_nul_inside_an_id_is_refused() -> None:
    codec = RecordCodec()
    for raw in (b'{"id": "20\\u00001", "text": "a"}', b'{"id": "\\u0000", "text": "a"}'):
        with pytest.raises(RecordError) as caught:
            codec.decode_event(raw)
        assert caught.value.reason == dl.MISSING_ID and "NUL" in caught.value.detail
    with pytest.raises(RecordError):
        codec.decode_feedback(b'{"id": "20\\u00001", "label": "hate"}', LABELS)
    # Other unusual ids are still ids.
    assert codec.decode_event(b'{"id": "a b\\u00e9", "text": "a"}').id == "a bé"


def test_the_new_reason_is_a_documented_dead_letter_series() -> None:
    assert dl.DUPLICATE_KEYS in dl.REASONS
    text = Path(dl.__file__).read_text(encoding="utf-8")
    assert "DUPLICATE_KEYS = " in text and "names the same key twice" in text
    metrics = OperatorMetrics(["hashed", "llm"])
    assert metrics.registry.get_sample_value(
        "streamcascade_dead_letters_total", {"reason": "duplicate_keys"}) == 0.0


def test_a_record_key_that_is_not_the_id_is_counted_and_warned_once_per_partition(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = OperatorMetrics(["hashed", "llm"])
    check = KeyMismatchCheck(lambda topic: metrics.record_key_mismatches.labels(topic).inc())
    with caplog.at_level(logging.WARNING):
        assert not check(b"2001", "2001", SourcePosition("events", 0, 1))
        assert not check(None, "2001", SourcePosition("events", 0, 2))
        for offset in range(5):
            assert check(b"other", "2001", SourcePosition("events", 0, offset))
        assert check(b"other", "2001", SourcePosition("events", 1, 9))
        assert check(b"x", "7", SourcePosition("feedback", 0, 3))
    assert metrics.registry.get_sample_value(
        "streamcascade_record_key_mismatches_total", {"topic": "events"}) == 6
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3  # events/0, events/1, feedback/0
    assert "events partition 0 is keyed b'other', not by its event id '2001'" in warned[0]


def test_rolling_figures_read_nan_before_any_data() -> None:
    metrics = OperatorMetrics(["hashed", "llm"])
    value = metrics.registry.get_sample_value
    assert math.isnan(value("streamcascade_rolling_accuracy") or 0.0)
    assert math.isnan(value("streamcascade_llm_share") or 0.0)
    # A series with labels and no data is absent.
    assert value("streamcascade_deferral_rate", {"stage": "hashed"}) is None
    assert value("streamcascade_publish_gate_loss", {"source": "llm"}) is None
    metrics.observe_ground_truth(1, 1)
    assert value("streamcascade_rolling_accuracy") == 1.0
