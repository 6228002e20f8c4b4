"""The operator's JSON records: events, feedback, outputs, dead letters."""

from __future__ import annotations

import base64
import json

import pytest

from streamcascade.errors import RecordError
from streamcascade.models.types import Decision, Event, LabelSet
from streamcascade.operators import dead_letters as dl
from streamcascade.operators.codec import RecordCodec

LABELS = LabelSet(("noHate", "hate"))


def reason_of(codec: RecordCodec, raw: bytes | None) -> str:
    with pytest.raises(RecordError) as info:
        codec.decode_event(raw)
    return info.value.reason


def test_decodes_an_event_with_configured_field_names() -> None:
    codec = RecordCodec(id_field="key", text_field="body")
    assert codec.decode_event(b'{"key": 12, "body": "hi there"}') == Event("12", "hi there")
    # The default field names are not looked at any more.
    assert reason_of(codec, b'{"id": 1, "text": "x"}') == dl.MISSING_ID


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", dl.MALFORMED_JSON),
        (b"\xff\xfe", dl.MALFORMED_JSON),
        (b"[1, 2]", dl.MALFORMED_JSON),
        (None, dl.MALFORMED_JSON),
        (b'{"text": "no id"}', dl.MISSING_ID),
        (b'{"id": true, "text": "bool id"}', dl.MISSING_ID),
        (b'{"id": "", "text": "empty id"}', dl.MISSING_ID),
        (b'{"id": 1}', dl.MISSING_TEXT),
        (b'{"id": 1, "text": "   "}', dl.MISSING_TEXT),
        (b'{"id": 1, "text": 5}', dl.MISSING_TEXT),
    ],
)
def test_bad_events_get_their_reason(raw: bytes | None, reason: str) -> None:
    assert reason_of(RecordCodec(), raw) == reason


def test_oversized_payload_is_refused_before_parsing() -> None:
    codec = RecordCodec(max_bytes=100)
    big = json.dumps({"id": 1, "text": "x" * 200}).encode()
    assert reason_of(codec, big) == dl.OVERSIZED
    assert codec.decode_event(json.dumps({"id": 1, "text": "x" * 50}).encode()).id == "1"


def test_feedback_labels_are_checked_against_the_task() -> None:
    codec = RecordCodec()
    fb = codec.decode_feedback(b'{"id": 3, "label": "hate", "source": "llm"}', LABELS)
    assert (fb.event_id, fb.label, fb.source) == ("3", 1, "llm")
    assert codec.decode_feedback(b'{"id": 3, "label": "noHate"}', LABELS).source == "ground_truth"
    for raw in (b'{"id": 3, "label": "maybe"}', b'{"id": 3}', b'{"id": 3, "label": 1}'):
        with pytest.raises(RecordError) as info:
            codec.decode_feedback(raw, LABELS)
        assert info.value.reason == dl.UNKNOWN_LABEL


def test_output_carries_every_field() -> None:
    decision = Decision("7", "hate", 1, "hashed", 0, 0.91234567, 0.5, ["hashed"], model_version=4)
    out = json.loads(RecordCodec().encode_output(decision, 3.25))
    assert out == {"id": "7", "label": "hate", "stage": "hashed", "confidence": 0.912346,
                   "cost": 0.5, "model_version": 4, "latency_ms": 3.25}
    assert RecordCodec.key("7") == b"7"


def test_feedback_round_trips() -> None:
    codec = RecordCodec(id_field="key", label_field="y")
    raw = codec.encode_feedback("9", "hate", "llm")
    assert json.loads(raw) == {"key": "9", "y": "hate", "source": "llm"}
    assert codec.decode_feedback(raw, LABELS).label == 1


def test_dead_letter_keeps_original_bytes_and_position() -> None:
    original = b"\x00\x01 not json \xff"
    letter = dl.DeadLetter(original, dl.MALFORMED_JSON, dl.SourcePosition("events", 2, 41),
                           "not JSON", key=b"k1")
    out = json.loads(RecordCodec.encode_dead_letter(letter))
    assert base64.b64decode(out["original"]) == original
    assert base64.b64decode(out["key"]) == b"k1"
    assert (out["reason"], out["topic"], out["partition"], out["offset"]) == (
        "malformed_json", "events", 2, 41)


def test_max_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        RecordCodec(max_bytes=0)


def test_a_dead_letter_always_fits_its_topic() -> None:
    """Base64 makes a dead letter 4/3 of its original: a record near the broker's limit gives a
    dead letter over it, so the topic takes more, and beyond that the original is cut, saying
    so, rather than the broker refusing the dead letter (which would stop the stream)."""
    import hashlib

    position = dl.SourcePosition("events", 0, 7)
    near_limit = b"x" * 1_000_000
    raw, cut = dl.keepable(near_limit)
    assert raw == near_limit and cut == ""
    huge = bytes(range(256)) * (13 * 1024 * 1024 // 256)
    raw, cut = dl.keepable(huge)
    letter = RecordCodec.encode_dead_letter(dl.DeadLetter(raw, dl.OVERSIZED, position, cut))
    assert len(letter) <= dl.MAX_BYTES
    assert huge.startswith(raw) and len(raw) < len(huge)
    assert str(len(huge)) in cut and hashlib.sha256(huge).hexdigest() in cut
    # A dead-letter topic at the broker's default limit (made elsewhere): cut to fit it.
    default_limit = 1_048_588
    raw, cut = dl.keepable(near_limit, default_limit)
    letter = RecordCodec.encode_dead_letter(dl.DeadLetter(raw, dl.OVERSIZED, position, cut))
    assert len(letter) <= default_limit and len(raw) == dl.original_limit(default_limit)
