"""A published snapshot of the fine-tuned stage, and how it travels inside the stage's state.

A snapshot is what answers events: the encoder's top as an ONNX graph (bytes that ONNX Runtime
loads; data, never unpickled), the head trained with it, and, so that a learner that takes over
goes on from it rather than from the package's weights, the same top's torch weights as plain
float32 arrays. Snapshot 0 is the split export's own top (:mod:`streamcascade.onnx_exports.split`)
and carries none of these: every worker has it on disk.

In the stage's state (:mod:`streamcascade.models.state`) a snapshot is the metadata under
``"snapshot"`` (number, demonstrations covered, variant, parity figures, the graph's sha256) and
arrays prefixed ``snapshot.``. The graph's sha256 is checked before it is loaded, so a state whose
graph was altered after it was made is refused even where the state topic's signature was not
checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamcascade.models.errors import ModelStateError

_GRAPH = "snapshot.onnx"
_HEAD_W = "snapshot.head_weights"
_HEAD_B = "snapshot.head_bias"
_TOP = "snapshot.top."


@dataclass(frozen=True)
class Snapshot:
    """One published version of the stage's encoder top and head."""

    number: int  # 0: the export's own top, untrained
    covers: int  # demonstrations the training behind it had been given
    variant: str = "fp32"  # of the graph
    onnx: bytes | None = None  # None for snapshot 0 (the export's file)
    head_weights: np.ndarray | None = None  # (n_inputs, n_classes), the head trained with it
    head_bias: np.ndarray | None = None
    top: dict[str, np.ndarray] = field(default_factory=dict)  # the top's torch weights
    parity: dict[str, float] = field(default_factory=dict)
    #: The trainer's mean log-loss on the demonstrations of its window, each taken before it
    #: learned them (the stage compares it with its own answers' on the same demonstrations).
    window_loss: float | None = None

    @property
    def sha256(self) -> str | None:
        return None if self.onnx is None else hashlib.sha256(self.onnx).hexdigest()

    def meta(self) -> dict[str, Any]:
        return {"number": self.number, "covers": self.covers, "variant": self.variant,
                "parity": self.parity, "sha256": self.sha256, "window_loss": self.window_loss}

    def arrays(self) -> dict[str, np.ndarray]:
        if self.onnx is None:
            return {}
        assert self.head_weights is not None and self.head_bias is not None
        out = {_GRAPH: np.frombuffer(self.onnx, dtype=np.uint8), _HEAD_W: self.head_weights,
               _HEAD_B: self.head_bias}
        out.update({_TOP + name: value for name, value in self.top.items()})
        return out


def snapshot_from_state(meta: Any, arrays: dict[str, np.ndarray], n_inputs: int,
                        n_classes: int, top_shapes: dict[str, tuple[int, ...]] | None
                        ) -> Snapshot:
    """The snapshot a state carries; a :class:`ModelStateError` if anything does not fit.

    ``top_shapes`` are the top's weight names and shapes (from the export) the arrays must
    match; ``None`` skips that check (an export without torch weights to compare with).
    """
    if not isinstance(meta, dict):
        raise ModelStateError("fine-tuned stage state has no snapshot metadata")
    try:
        number, covers = int(meta["number"]), int(meta["covers"])
        variant, parity = str(meta["variant"]), dict(meta.get("parity") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelStateError(f"fine-tuned stage snapshot metadata is malformed: {exc}") from None
    if number < 0 or covers < 0 or variant not in ("fp32", "int8"):
        raise ModelStateError(f"fine-tuned stage snapshot metadata is out of range: {meta}")
    if number == 0:
        return Snapshot(0, covers, variant, parity={k: float(v) for k, v in parity.items()})
    if _GRAPH not in arrays or _HEAD_W not in arrays or _HEAD_B not in arrays:
        raise ModelStateError(f"fine-tuned stage snapshot {number} lacks its graph or head")
    onnx = arrays[_GRAPH].tobytes()
    if hashlib.sha256(onnx).hexdigest() != meta.get("sha256"):
        raise ModelStateError(f"fine-tuned stage snapshot {number}: the ONNX graph does not "
                              "match its sha256 (altered or truncated)")
    weights, bias = arrays[_HEAD_W], arrays[_HEAD_B]
    if weights.shape != (n_inputs, n_classes) or bias.shape != (n_classes,):
        raise ModelStateError(f"fine-tuned stage snapshot {number}: head of shape "
                              f"{weights.shape}, expected {(n_inputs, n_classes)}")
    top = {name[len(_TOP):]: value for name, value in arrays.items() if name.startswith(_TOP)}
    if top_shapes is not None:
        shapes = {name: tuple(value.shape) for name, value in top.items()}
        if shapes != top_shapes or any(v.dtype != np.float32 for v in top.values()):
            raise ModelStateError(f"fine-tuned stage snapshot {number}: the top's weights do "
                                  "not fit this stage's encoder")
    for value in (weights, bias, *top.values()):
        if not np.isfinite(value).all():
            raise ModelStateError(f"fine-tuned stage snapshot {number} holds non-finite "
                                  "numbers")
    window = meta.get("window_loss")
    return Snapshot(number, covers, variant, onnx, weights.astype(np.float64),
                    bias.astype(np.float64), top, {k: float(v) for k, v in parity.items()},
                    None if window is None else float(window))
