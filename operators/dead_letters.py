"""Dead letters: a record the operator cannot use, kept with its original bytes and a reason.

A dead letter never stops the stream: the record's offset is committed once its dead letter is
written, exactly as for an answered event. The reasons are short stable codes, so that a
dashboard can count them and a person can replay a topic's dead letters of one kind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: The dead-letter topic's largest record (its ``max.message.bytes``, and at most what the
#: operator's producer sends). A dead letter carries its original in base64, 4/3 of its size, so
#: originals of up to about 12 MiB fit whole: above the 1 MB a broker takes by default, so a
#: record that was too big to use still has room in its dead letter.
MAX_BYTES = 16 * 1024 * 1024
#: Room in a dead letter for all but the original (key, reason, detail, position).
_ROOM = 64 * 1024

#: The record is not JSON, or not a JSON object (``NaN`` and ``Infinity``, which Python's JSON
#: reader would take, are not JSON either).
MALFORMED_JSON = "malformed_json"
#: The id field is missing, empty, not a string or an integer, longer than the codec's
#: ``MAX_ID_BYTES``, not valid Unicode, or holds a NUL character.
MISSING_ID = "missing_id"
#: The text field is missing, not a string, empty, or not valid Unicode.
MISSING_TEXT = "missing_text"
#: The record is larger than the configured size limit.
OVERSIZED = "oversized_payload"
#: A feedback record whose label is not one of the task's labels.
UNKNOWN_LABEL = "unknown_label"
#: A feedback record whose event never arrived within the decision log's time-to-live.
FEEDBACK_UNMATCHED = "feedback_unmatched"
#: The LLM gave no answer, after the backend's retries.
LLM_FAILED = "llm_failed"
#: The cascade raised on a batch (a bug or a stage that cannot run); the batch is dead-lettered.
CASCADE_ERROR = "cascade_error"
#: A feedback record whose source is not one the operator knows (``ground_truth``, ``llm``,
#: ``audit``).
UNKNOWN_SOURCE = "unknown_source"
#: An object of the record names the same key twice (``{"id": "1", "id": "2"}``): JSON readers
#: differ on which one counts (the first, the last, an error), so the record is not guessed at.
DUPLICATE_KEYS = "duplicate_keys"

REASONS: tuple[str, ...] = (
    MALFORMED_JSON,
    MISSING_ID,
    MISSING_TEXT,
    OVERSIZED,
    UNKNOWN_LABEL,
    FEEDBACK_UNMATCHED,
    LLM_FAILED,
    CASCADE_ERROR,
    UNKNOWN_SOURCE,
    DUPLICATE_KEYS,
)


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a record was read: enough to find it again in the log."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be used: its original bytes, why, and where it came from."""

    raw: bytes
    reason: str
    position: SourcePosition
    detail: str = ""
    key: bytes | None = None


def original_limit(max_bytes: int = MAX_BYTES) -> int:
    """The largest original a dead letter of at most ``max_bytes`` carries whole (base64)."""
    return max(max_bytes - _ROOM, 0) // 4 * 3


#: A dead letter's detail is cut to this many characters (it may quote an id or a label).
DETAIL_CHARS = 1000


def keepable(raw: bytes, max_bytes: int = MAX_BYTES, key: bytes | None = None
             ) -> tuple[bytes, str]:
    """What of ``raw`` a dead letter of at most ``max_bytes`` can carry beside ``key`` (sent as
    the record's key and again in base64 in its value), and a note for its detail when it had
    to be cut (a dead letter the broker refused would stop the stream; this one says what is
    missing)."""
    key_room = 0 if key is None else len(key) + (len(key) + 2) // 3 * 4
    limit = original_limit(max_bytes - key_room)
    if len(raw) <= limit:
        return raw, ""
    digest = hashlib.sha256(raw).hexdigest()
    return raw[:limit], (f"; the original's {len(raw)} bytes are cut to the first {limit} "
                         f"(sha256 of the whole {digest})")


def fitting_key(key: bytes | None, max_bytes: int = MAX_BYTES) -> tuple[bytes | None, str]:
    """``key`` if a dead letter of at most ``max_bytes`` has room for it (twice: as the record's
    key and in its value), else ``None`` and a note for the detail."""
    if key is None or len(key) <= max_bytes // 8:
        return key, ""
    digest = hashlib.sha256(key).hexdigest()
    return None, f"; the key's {len(key)} bytes are left out (sha256 {digest})"
