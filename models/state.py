"""A data-only container for learned state: JSON metadata plus raw numpy arrays.

Model state travels on a Kafka topic, so it must never be unpickled. This format holds only a JSON
header (numbers, strings, lists, dicts) and typed numeric arrays whose dtype is checked against an
allow-list; anything else is refused with :class:`~streamcascade.models.errors.ModelStateError`.

Layout::

    b"SCST" | version (1 byte) | header length (uint32 LE) | header JSON (utf-8) | array bytes...

``pack_state(..., compress=True)`` zlib-compresses the whole (level 1, :func:`compress_state`);
:func:`unpack_state` reads both. A container holding other containers (the cascade holds its
stages') compresses once, at the outermost level: compressed bytes do not compress again, so
compressing each part and then the whole would spend a worker's snapshot time for no smaller
state.

>>> import numpy as np
>>> blob = pack_state({"kind": "demo"}, {"w": np.arange(3, dtype=np.float32)})
>>> meta, arrays = unpack_state(blob)
>>> meta["kind"], arrays["w"].tolist()
('demo', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from streamcascade.models.errors import ModelStateError

_MAGIC = b"SCST"
_VERSION = 1
_ALLOWED_DTYPES = {"float32", "float64", "int32", "int64", "uint32", "uint8", "bool"}


def pack_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
               *, compress: bool = False) -> bytes:
    """Serialise JSON-able ``meta`` and numeric ``arrays`` into bytes, zlib-compressed if
    ``compress``."""
    specs = []
    chunks = []
    offset = 0
    for name, array in (arrays or {}).items():
        arr = np.ascontiguousarray(array)
        if arr.dtype.name not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {arr.dtype}, not a plain numeric type")
        raw = arr.tobytes()
        specs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape),
                      "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps({"meta": meta, "arrays": specs}, separators=(",", ":")).encode()
    body = _MAGIC + bytes([_VERSION]) + struct.pack("<I", len(header)) + header + b"".join(chunks)
    return compress_state(body) if compress else body


def compress_state(body: bytes) -> bytes:
    """``body`` (packed state) zlib-compressed; :func:`unpack_state` reads the result.

    zlib releases the GIL while it compresses, so a worker runs this in a thread beside its event
    loop without slowing the loop down (packing, which copies arrays, holds the GIL).
    """
    return zlib.compress(body, 1)


def unpack_state(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The inverse of :func:`pack_state`; a :class:`ModelStateError` for anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ModelStateError(f"model state is {type(data).__name__}, not bytes")
    body = bytes(data)
    if body[:4] != _MAGIC:
        try:  # compressed
            body = zlib.decompress(body)
        except zlib.error as exc:
            raise ModelStateError(f"model state is not state bytes: {exc}") from None
    if len(body) < 9 or body[:4] != _MAGIC:
        raise ModelStateError("model state does not start with the streamcascade state marker")
    if body[4] != _VERSION:
        raise ModelStateError(f"model state format version {body[4]} is not supported")
    (header_len,) = struct.unpack("<I", body[5:9])
    start = 9 + header_len
    if start > len(body):
        raise ModelStateError("model state header is truncated")
    try:
        header = json.loads(body[9:start].decode())
        meta = header["meta"]
        specs = header["arrays"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelStateError(f"model state header is not valid: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    payload = memoryview(body)[start:]
    for spec in specs:
        try:
            dtype = np.dtype(str(spec["dtype"]))
            if dtype.name not in _ALLOWED_DTYPES:
                raise ModelStateError(f"array {spec['name']!r} has a refused dtype {dtype}")
            shape = tuple(int(s) for s in spec["shape"])
            lo, n = int(spec["offset"]), int(spec["nbytes"])
            if lo < 0 or lo + n > len(payload) or n != int(np.prod(shape)) * dtype.itemsize:
                raise ModelStateError(f"array {spec['name']!r} does not fit the state bytes")
            arrays[str(spec["name"])] = np.frombuffer(payload[lo:lo + n], dtype=dtype).reshape(
                shape).copy()
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStateError(f"model state array spec is not valid: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelStateError("model state metadata is not an object")
    return meta, arrays


def expect(meta: Mapping[str, Any], key: str, value: Any) -> None:
    """Refuse state whose ``meta[key]`` differs from ``value`` (state of another configuration)."""
    if meta.get(key) != value:
        raise ModelStateError(
            f"model state was made for {key}={meta.get(key)!r}, this model has {key}={value!r}")


def load_all_or_nothing(data: bytes, shape: Mapping[str, Any], current: Callable[[], bytes],
                        load: Callable[[dict[str, Any], dict[str, np.ndarray]], None],
                        what: str) -> None:
    """Load ``data`` into a model whose state must match ``shape`` (see :func:`expect`), all or
    nothing: where a part fails, ``load`` is handed the state as it was (``current()``, taken
    before) again, and the failure is a :class:`ModelStateError` naming ``what``."""
    meta, arrays = unpack_state(data)
    for key, value in shape.items():
        expect(meta, key, value)
    backup = current()
    try:
        load(meta, arrays)
    except ModelStateError:
        load(*unpack_state(backup))
        raise
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        load(*unpack_state(backup))
        raise ModelStateError(f"{what} state is malformed: {exc}") from None
