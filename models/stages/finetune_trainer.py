"""The torch side of the fine-tuned stage: the encoder's top layers and a head, trained online.

Each demonstration arrives as the frozen bottom's hidden states for its text (computed once, when
the stage first saw the text, and kept in half precision), its label index and the upstream
stage's centred log-probabilities. The trainer takes optimiser steps of ``batch_size`` examples:
at most ``new_per_step`` are new, the rest are drawn at random from a replay buffer of the
``buffer_size`` most recent demonstrations (recent, not a reservoir of the whole stream, so that
a drifting stream is followed). So every demonstration is trained on once as new and about
``batch_size / new_per_step - 1`` more times from the buffer, in steps that mix it with others:
labels from an LLM are noisy, and one pass over each would let the last few steer the weights.

AdamW moves the top's weights (small steps: the encoder already knows language) and the head
(large steps: it starts from nothing). Everything runs on one torch thread in the caller's thread
(the stage's background trainer), on CUDA when torch sees a GPU.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # (the export tooling is imported where a top is made, not by the core)
    from streamcascade.onnx_exports.split import EncoderTop


@dataclass(slots=True)
class Example:
    """One demonstration as the trainer needs it."""

    hidden: np.ndarray  # (tokens, hidden_size) float16: the frozen bottom's output
    target: int
    upstream: np.ndarray  # (n_classes,) float32: the upstream's centred log-probabilities


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class TopTrainer:
    """Trains ``top`` and a linear head over ``[embedding, upstream log-probabilities]``.

    Parameters
    ----------
    top
        The encoder's trainable top (its weights are trained in place).
    n_classes
        The task's number of labels.
    stack
        Whether the head reads the upstream stage's log-probabilities.
    learning_rate, head_learning_rate
        AdamW's steps for the top's weights and for the head.
    weight_decay
        AdamW's decoupled weight decay on the top's weights.
    batch_size, new_per_step
        Examples per step, and how many of them are new at most (the rest are replayed).
    buffer_size
        Demonstrations kept for replay (the most recent).
    seed
        Seeds the replay draws and the head's initialisation.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, top: EncoderTop, n_classes: int, *, stack: bool, learning_rate: float,
                 head_learning_rate: float, weight_decay: float, batch_size: int,
                 new_per_step: int, buffer_size: int, seed: int, device: str = "auto") -> None:
        self.device = pick_device(device)
        self.top = top.to(self.device).train()
        self.n_classes = int(n_classes)
        self.stack = bool(stack)
        hidden = top.cfg.hidden_size
        self.head = nn.Linear(hidden + (self.n_classes if self.stack else 0), self.n_classes)
        nn.init.zeros_(self.head.weight)  # uniform answers until it has learned something
        nn.init.zeros_(self.head.bias)
        self.head.to(self.device)
        self.batch_size = int(batch_size)
        self.new_per_step = max(1, min(int(new_per_step), self.batch_size))
        self.buffer: collections.deque[Example] = collections.deque(maxlen=int(buffer_size))
        self.pending: list[Example] = []
        self.rng = np.random.default_rng(seed)
        self.optimizer = torch.optim.AdamW([
            {"params": list(self.top.parameters()), "lr": float(learning_rate),
             "weight_decay": float(weight_decay)},
            {"params": list(self.head.parameters()), "lr": float(head_learning_rate),
             "weight_decay": 0.0},
        ])
        self.steps = 0
        self.examples_trained = 0
        self._window_loss = 0.0
        self._window_count = 0

    # -- training ---------------------------------------------------------------------------------

    def add(self, examples: Sequence[Example]) -> int:
        """Queue ``examples`` and take every step that ``new_per_step`` new ones fill; returns the
        number of steps taken."""
        self.pending.extend(examples)
        steps = 0
        while len(self.pending) >= self.new_per_step:
            self._step(self.pending[:self.new_per_step])
            del self.pending[:self.new_per_step]
            steps += 1
        return steps

    def flush(self) -> int:
        """One step over the examples still queued (fewer than ``new_per_step``), if any."""
        if not self.pending:
            return 0
        self._step(self.pending)
        self.pending = []
        return 1

    def _step(self, new: Sequence[Example]) -> None:
        n_replay = min(self.batch_size - len(new), len(self.buffer))
        replayed = ([self.buffer[int(i)] for i in
                     self.rng.choice(len(self.buffer), size=n_replay, replace=False)]
                    if n_replay > 0 else [])
        batch = [*new, *replayed]
        hidden, mask = self._pad([e.hidden for e in batch])
        targets = torch.tensor([e.target for e in batch], dtype=torch.int64, device=self.device)
        logits = self._logits(hidden, mask, np.stack([e.upstream for e in batch]))
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        # The new examples' losses come before any step that learned them: prequential.
        self._window_loss += float(losses[:len(new)].detach().sum())
        self._window_count += len(new)
        loss = losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([*self.top.parameters(), *self.head.parameters()], 1.0)
        self.optimizer.step()
        self.buffer.extend(new)
        self.steps += 1
        self.examples_trained += len(new)

    def take_window_loss(self) -> float | None:
        """The mean log-loss of the examples that were new since the last call, each taken
        before the model learned it (None if there were none); the count starts again."""
        if not self._window_count:
            return None
        mean = self._window_loss / self._window_count
        self._window_loss, self._window_count = 0.0, 0
        return mean

    def _pad(self, states: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in states)
        hidden = np.zeros((len(states), width, states[0].shape[1]), dtype=np.float32)
        mask = np.zeros((len(states), width), dtype=np.int64)
        for row, state in enumerate(states):
            hidden[row, :len(state)] = state
            mask[row, :len(state)] = 1
        return (torch.from_numpy(hidden).to(self.device), torch.from_numpy(mask).to(self.device))

    def _logits(self, hidden: torch.Tensor, mask: torch.Tensor,
                upstream: np.ndarray) -> torch.Tensor:
        embedding = self.top(hidden, mask)
        if self.stack:
            ups = torch.from_numpy(np.asarray(upstream, dtype=np.float32)).to(self.device)
            embedding = torch.cat([embedding, ups], dim=1)
        logits: torch.Tensor = self.head(embedding)
        return logits

    # -- weights ----------------------------------------------------------------------------------

    def head_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The head as ``(weights (n_inputs, n_classes), bias (n_classes,))``, float64."""
        with torch.no_grad():
            return (self.head.weight.detach().cpu().numpy().T.astype(np.float64),
                    self.head.bias.detach().cpu().numpy().astype(np.float64))

    def top_arrays(self) -> dict[str, np.ndarray]:
        """The top's weights by name, float32 (a copy)."""
        return {k: v.detach().cpu().numpy().astype(np.float32, copy=True)
                for k, v in self.top.state_dict().items()}

    def top_copy(self) -> EncoderTop:
        """A CPU copy of the top with its current weights, for export."""
        from streamcascade.onnx_exports.split import EncoderTop

        top = EncoderTop(self.top.cfg, len(self.top.layers))
        top.load_state_dict({k: v.detach().cpu().clone() for k, v in
                             self.top.state_dict().items()})
        return top.eval()

    def load(self, top: Mapping[str, np.ndarray], head_weights: np.ndarray,
             head_bias: np.ndarray) -> None:
        """Go on from published weights (another learner's, read from the state); the
        optimiser's moments and the replay buffer start afresh."""
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy())
                 for k, v in top.items()}
        self.top.load_state_dict(state, strict=True)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(head_weights).T.copy()))
            self.head.bias.copy_(torch.from_numpy(np.asarray(head_bias).copy()))
        self.optimizer.state.clear()
        self.buffer.clear()
        self.pending = []
