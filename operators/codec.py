"""JSON records in and out of the operator: events, feedback, outputs and dead letters.

Events are JSON objects whose id and text live under configurable field names (``id`` and
``text`` by default). Every decoding failure raises :class:`~streamcascade.errors.RecordError`
with a reason code from :mod:`streamcascade.operators.dead_letters`; the operator turns it into a
dead letter and goes on. Reading is strict where readers differ: an object that names a key twice
is a ``duplicate_keys`` dead letter, and ``NaN`` or ``Infinity`` (which Python's reader takes) is
not JSON.

>>> codec = RecordCodec(text_field="body")
>>> codec.decode_event(b'{"id": 7, "body": "hello"}')
Event(id='7', text='hello')
>>> codec.decode_event(b'{"id": 7, "body": ""}')
Traceback (most recent call last):
...
streamcascade.models.errors.RecordError: missing_text: field 'body' is empty
>>> codec.decode_event(b'{"id": 7, "body": "hello", "id": 8}')
Traceback (most recent call last):
...
streamcascade.models.errors.RecordError: duplicate_keys: an object names the key 'id' twice
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from streamcascade.errors import RecordError, UnknownLabelError
from streamcascade.models.types import (
    SOURCE_AUDIT,
    SOURCE_GROUND_TRUTH,
    SOURCE_LLM,
    Decision,
    Event,
    LabelSet,
)
from streamcascade.operators import dead_letters as dl

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: Longest event id, in UTF-8 bytes: an id is the key of every record about its event (outputs
#: carry it twice), so an unbounded one could make a record the broker refuses.
MAX_ID_BYTES = 1024
#: The sources of feedback the operator knows.
SOURCES = (SOURCE_GROUND_TRUTH, SOURCE_LLM, SOURCE_AUDIT)


class _DuplicateKey(ValueError):
    """An object of the record names a key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: an object, unless it names a key twice."""
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return value


def _not_json(constant: str) -> Any:
    """``json.loads``' hook for ``NaN``, ``Infinity`` and ``-Infinity``: not JSON (RFC 8259)."""
    raise ValueError(f"{constant} is not JSON")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8 (JSON's ``\\ud83d`` escapes decode to a lone surrogate
    that does not, and every record about the event would fail to encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Feedback:
    """A label for an event, from a feedback topic: ground truth, the LLM, or an audit."""

    event_id: str
    label: int
    source: str


class RecordCodec:
    """Turns Kafka record values into events and feedback, and answers into record values.

    Parameters
    ----------
    id_field, text_field
        Field names of the event id and text in input records.
    label_field, source_field
        Field names of the label and its source in feedback records (the id uses ``id_field``).
    max_bytes
        Records larger than this become ``oversized_payload`` dead letters, unread.
    """

    def __init__(
        self,
        id_field: str = "id",
        text_field: str = "text",
        label_field: str = "label",
        source_field: str = "source",
        max_bytes: int = 1_000_000,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.id_field = id_field
        self.text_field = text_field
        self.label_field = label_field
        self.source_field = source_field
        self.max_bytes = max_bytes

    # -- reading ---------------------------------------------------------------------------
    def _object(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise RecordError(dl.MALFORMED_JSON, "the record has no value (a tombstone)")
        if len(raw) > self.max_bytes:
            raise RecordError(dl.OVERSIZED, f"{len(raw)} bytes > limit {self.max_bytes}")
        try:
            # Decoded strictly first (json.loads(bytes) lets invalid UTF-8 through as lone
            # surrogates), in the encoding JSON allows that the bytes show (a BOM, UTF-16, ...).
            value = json.loads(raw.decode(json.detect_encoding(raw)),
                               object_pairs_hook=_unique_keys, parse_constant=_not_json)
        except _DuplicateKey as exc:
            shown = repr(str(exc))[:100]
            raise RecordError(dl.DUPLICATE_KEYS, f"an object names the key {shown} twice") from None
        except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
            raise RecordError(dl.MALFORMED_JSON, f"not JSON ({type(exc).__name__})") from None
        if not isinstance(value, dict):
            raise RecordError(dl.MALFORMED_JSON, f"a JSON {type(value).__name__}, not an object")
        return value

    def _id(self, record: dict[str, Any]) -> str:
        event_id = record.get(self.id_field)
        # bool is an int in Python, but `true` is not an id.
        if isinstance(event_id, bool) or not isinstance(event_id, str | int):
            raise RecordError(dl.MISSING_ID, f"field {self.id_field!r} is missing or not an id")
        event_id = str(event_id)
        if not event_id:
            raise RecordError(dl.MISSING_ID, f"field {self.id_field!r} is empty")
        try:
            size = len(event_id.encode("utf-8"))
        except UnicodeEncodeError:  # (see _is_unicode)
            raise RecordError(dl.MISSING_ID,
                              f"field {self.id_field!r} is not valid Unicode") from None
        if size > MAX_ID_BYTES:
            raise RecordError(dl.MISSING_ID, f"field {self.id_field!r} is longer than "
                                             f"{MAX_ID_BYTES} bytes")
        if "\x00" in event_id:  # (C clients and logs cut it short there: two ids would meet)
            raise RecordError(dl.MISSING_ID, f"field {self.id_field!r} holds a NUL character")
        return event_id

    def decode_event(self, raw: bytes | None) -> Event:
        """The event in ``raw``; a :class:`RecordError` if it is not a usable event."""
        record = self._object(raw)
        event_id = self._id(record)
        text = record.get(self.text_field)
        if not isinstance(text, str):
            raise RecordError(dl.MISSING_TEXT, f"field {self.text_field!r} is missing or not text")
        if not text.strip():
            raise RecordError(dl.MISSING_TEXT, f"field {self.text_field!r} is empty")
        if not _is_unicode(text):
            raise RecordError(dl.MISSING_TEXT, f"field {self.text_field!r} is not valid Unicode")
        return Event(event_id, text)

    def decode_feedback(self, raw: bytes | None, labels: LabelSet) -> Feedback:
        """The feedback in ``raw``, its label checked against ``labels``."""
        record = self._object(raw)
        event_id = self._id(record)
        label = record.get(self.label_field)
        if not isinstance(label, str):
            raise RecordError(
                dl.UNKNOWN_LABEL, f"field {self.label_field!r} is missing or not text"
            )
        try:
            index = labels.index(label)
        except UnknownLabelError as exc:
            raise RecordError(dl.UNKNOWN_LABEL, str(exc)) from None
        source = record.get(self.source_field)
        if source is None:
            source = SOURCE_GROUND_TRUTH  # (labels from people need not say so)
        if source not in SOURCES:
            shown = repr(source)[:100]
            raise RecordError(dl.UNKNOWN_SOURCE, f"field {self.source_field!r} is {shown}, not "
                                                 f"one of {list(SOURCES)}")
        return Feedback(event_id, index, source)

    # -- writing ---------------------------------------------------------------------------
    @staticmethod
    def key(event_id: str) -> bytes:
        """The Kafka key of every record about ``event_id`` (outputs, feedback, dead letters)."""
        return event_id.encode("utf-8")

    def encode_event_fields(self, event_id: str, text: str) -> bytes:
        """An input record (for producers: the demo, the benchmark, tests)."""
        return _compact({self.id_field: event_id, self.text_field: text}).encode("utf-8")

    def encode_output(self, decision: Decision, latency_ms: float) -> bytes:
        """The output record of an answered event; one an earlier stage answered because the
        LLM could not carries ``"degraded": true`` (and ``stage`` names that stage); a
        program's answer carries ``backends``, the backend chosen per module called."""
        output: dict[str, Any] = {
            "id": decision.event_id,
            "label": decision.label,
            "stage": decision.stage,
            # (JSON has no NaN: a stage's broken probability is no confidence, not bad JSON)
            "confidence": round(float(decision.confidence), 6)
            if math.isfinite(decision.confidence) else None,
            "cost": float(decision.cost),
            "model_version": int(decision.model_version),
            "latency_ms": round(latency_ms, 3),
        }
        if decision.degraded:
            output["degraded"] = True
        if decision.backends is not None:
            output["backends"] = decision.backends
        return _compact(output).encode("utf-8")

    def encode_feedback(self, event_id: str, label: str, source: str) -> bytes:
        return _compact(
            {self.id_field: event_id, self.label_field: label, self.source_field: source}
        ).encode("utf-8")

    @staticmethod
    def encode_dead_letter(letter: dl.DeadLetter) -> bytes:
        """A dead letter: the original bytes in base64, the reason, and the source position."""
        return _compact(
            {
                "original": base64.b64encode(letter.raw).decode("ascii"),
                "key": None if letter.key is None else base64.b64encode(letter.key).decode("ascii"),
                "reason": letter.reason,
                "detail": letter.detail,
                "topic": letter.position.topic,
                "partition": letter.position.partition,
                "offset": letter.position.offset,
            }
        ).encode("utf-8")
