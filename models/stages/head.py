"""The online softmax head the stages share: a multinomial logistic regression moved by AdaGrad.

A stage turns a text into numbers (hashed n-gram counts, a sentence embedding); the head turns
those numbers into class probabilities and learns from one labelled example at a time. Inputs may
be dense (a row of every input) or sparse (the indices of the inputs a text has and their values),
so a head over a million hashed features touches only a text's own rows when it learns.

>>> head = SoftmaxHead(n_inputs=3, n_classes=2, learning_rate=0.5)
>>> head.proba(np.array([[1.0, 0.0, 0.0]])).tolist()
[[0.5, 0.5]]
>>> for _ in range(3):
...     head.learn_one(np.array([1.0, 0.0, 0.0]), target=1)
>>> bool(head.proba(np.array([[1.0, 0.0, 0.0]]))[0, 1] > 0.9)
True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import DTypeLike

#: Learn from every input row (a dense example); sparse examples name their rows instead.
ALL_ROWS = slice(None)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis; the largest logit is taken off first, so no exp
    overflows."""
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    return np.asarray(z / z.sum(axis=-1, keepdims=True))


class SoftmaxHead:
    """Weights ``(n_inputs, n_classes)`` and a bias, with AdaGrad's running squared gradients.

    Parameters
    ----------
    n_inputs, n_classes
        The shape of the weights.
    learning_rate
        AdaGrad's base step.
    l2
        L2 penalty on the weights an update touches.
    dtype
        The weights' and their squared gradients' dtype (float32 halves a wide sparse head's
        memory); the bias and its squared gradients are always float64.
    eps
        Added to AdaGrad's root before dividing, so a first step is finite.
    """

    def __init__(self, n_inputs: int, n_classes: int, *, learning_rate: float, l2: float = 0.0,
                 dtype: DTypeLike = np.float64, eps: float = 1e-8) -> None:
        self.n_inputs = int(n_inputs)
        self.n_classes = int(n_classes)
        self.learning_rate = float(learning_rate)
        self.l2 = float(l2)
        self.dtype = np.dtype(dtype)
        self.eps = float(eps)
        self.reset()

    def reset(self) -> None:
        """Forget everything: zero weights, so every answer is uniform."""
        shape = (self.n_inputs, self.n_classes)
        self.weights = np.zeros(shape, dtype=self.dtype)
        self.grad_sq = np.zeros(shape, dtype=self.dtype)
        self.bias = np.zeros(self.n_classes, dtype=np.float64)
        self.bias_grad_sq = np.zeros(self.n_classes, dtype=np.float64)

    # -- answering --------------------------------------------------------------------------------

    def proba(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities of dense examples, shape ``(n, n_inputs)`` -> ``(n, n_classes)``."""
        return softmax(inputs @ self.weights + self.bias)

    def proba_one(self, values: np.ndarray, rows: np.ndarray | slice = ALL_ROWS) -> np.ndarray:
        """Probabilities of one example whose inputs ``rows`` have ``values`` (the others are
        zero), shape ``(n_classes,)``."""
        return softmax(values @ self.weights[rows] + self.bias)

    def proba_sparse(self, rows: np.ndarray, values: np.ndarray, example: np.ndarray,
                     n_examples: int) -> np.ndarray:
        """Probabilities of several sparse examples at once: entry ``i`` says that example
        ``example[i]`` has input ``rows[i]`` at ``values[i]``. Shape ``(n_examples, n_classes)``.
        """
        picked = self.weights[rows]
        logits = np.stack([np.bincount(example, weights=values * picked[:, c],
                                       minlength=n_examples)
                           for c in range(self.n_classes)], axis=1) + self.bias
        return softmax(logits)

    # -- learning ---------------------------------------------------------------------------------

    def learn_one(self, values: np.ndarray, target: int,
                  rows: np.ndarray | slice = ALL_ROWS) -> None:
        """One AdaGrad step on one example (inputs as in :meth:`proba_one`) of class ``target``.

        ``rows`` must not repeat an index: each row's update is written once.
        """
        residual = self.proba_one(values, rows)
        residual[int(target)] -= 1.0
        grad = np.outer(values, residual).astype(self.dtype, copy=False)
        if self.l2:
            grad += self.l2 * self.weights[rows]
        acc = self.grad_sq[rows] + grad * grad
        self.grad_sq[rows] = acc
        self.weights[rows] -= self.learning_rate * grad / (np.sqrt(acc) + self.eps)
        self.bias_grad_sq += residual * residual
        self.bias -= self.learning_rate * residual / (np.sqrt(self.bias_grad_sq) + self.eps)

    # -- state ------------------------------------------------------------------------------------

    def arrays(self, rows: np.ndarray | slice = ALL_ROWS) -> dict[str, np.ndarray]:
        """What the head learned, as named arrays (only the weight ``rows`` given)."""
        return {"weights": self.weights[rows], "grad_sq": self.grad_sq[rows],
                "bias": self.bias, "bias_grad_sq": self.bias_grad_sq}

    def load_arrays(self, arrays: Mapping[str, np.ndarray],
                    rows: np.ndarray | slice = ALL_ROWS) -> None:
        """Take :meth:`arrays` back (into the weight ``rows`` they came from; the other rows are
        zeroed). Raises KeyError or ValueError, changing nothing, when they do not fit."""
        k = self.n_classes
        n = self.n_inputs if isinstance(rows, slice) else len(rows)
        if not isinstance(rows, slice) and (rows.dtype.kind not in "iu" or rows.ndim != 1 or (
                rows.size and (rows.min() < 0 or rows.max() >= self.n_inputs))):
            raise ValueError("row indices are not integers in range")
        weights = arrays["weights"].astype(self.dtype, copy=False).reshape(n, k)
        grad_sq = arrays["grad_sq"].astype(self.dtype, copy=False).reshape(n, k)
        bias = arrays["bias"].astype(np.float64, copy=False).reshape(k)
        bias_grad_sq = arrays["bias_grad_sq"].astype(np.float64, copy=False).reshape(k)
        self.reset()
        self.weights[rows] = weights
        self.grad_sq[rows] = grad_sq
        self.bias[:] = bias
        self.bias_grad_sq[:] = bias_grad_sq
