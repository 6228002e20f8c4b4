"""The data-only state container: raw or compressed, read back exactly, garbage refused."""

from __future__ import annotations

import numpy as np
import pytest

from streamcascade.errors import ModelStateError
from streamcascade.models.state import pack_state, unpack_state

ARRAYS = {"w": np.linspace(-1, 1, 40, dtype=np.float32).reshape(20, 2),
          "rows": np.arange(0, 200, 10, dtype=np.int64)}


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(compress: bool) -> None:
    blob = pack_state({"kind": "t", "n": 3}, ARRAYS, compress=compress)
    meta, arrays = unpack_state(blob)
    assert meta == {"kind": "t", "n": 3}
    assert arrays.keys() == ARRAYS.keys()
    for name, value in ARRAYS.items():
        assert arrays[name].dtype == value.dtype
        assert np.array_equal(arrays[name], value)


def test_compression_shrinks_what_repeats() -> None:
    arrays = {"z": np.zeros(10_000, dtype=np.float32)}
    assert len(pack_state({}, arrays, compress=True)) < len(pack_state({}, arrays)) // 10


@pytest.mark.parametrize("blob", [b"", b"SCST", b"not state", b"x\x9cgarbage", "SCST"])
def test_garbage_is_refused(blob: object) -> None:
    with pytest.raises(ModelStateError):
        unpack_state(blob)  # type: ignore[arg-type]
