"""The first stage's features and state, seen from outside the stage.

Features are the stage's own, so a model trained here answers online as it was trained: its
hashing and IDF weighting are called, not copied (``_hashed_counts_many``, ``_idf_weighted``,
which have no public name yet); the normalisation repeats the stage's answering path, and a test
holds the two together. The stage's state is read and written only through its public
``state_bytes`` and ``load_state`` and the container format of :mod:`streamcascade.models.state`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamcascade.models.relational.engines import Columns
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.state import pack_state, unpack_state

#: The feature every event has, at 1: the classes' bias is its weight.
BIAS = -1
_CHUNK = 2048


def _hashed(stage: HashedTextStage, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text, its unique hashed feature indices and their log counts (the stage's code)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, len(texts), _CHUNK):
        out.extend(stage._hashed_counts_many(texts[lo:lo + _CHUNK]))
    return out


def document_frequencies(stage: HashedTextStage, texts: Sequence[str]) -> np.ndarray:
    """How many of ``texts`` hold each feature: what the stage counts as it learns them."""
    counts = np.zeros(stage.n_features, dtype=np.uint32)
    for index, _ in _hashed(stage, texts):
        counts[index] += 1
    return counts


def load_arrays(stage: HashedTextStage, *, rows: np.ndarray, weights: np.ndarray,
                grad_sq: np.ndarray, doc_freq: np.ndarray, n_docs: int, bias: np.ndarray,
                bias_grad_sq: np.ndarray) -> None:
    """Give ``stage`` these learned arrays (``rows``: the feature indices the others describe)."""
    meta, _ = unpack_state(stage.state_bytes())
    meta["n_docs"] = int(n_docs)
    stage.load_state(pack_state(meta, {
        "rows": rows.astype(np.int64), "weights": weights.astype(np.float32),
        "grad_sq": grad_sq.astype(np.float32), "doc_freq": doc_freq.astype(np.uint32),
        "bias": bias.astype(np.float64), "bias_grad_sq": bias_grad_sq.astype(np.float64)}))


def set_idf(stage: HashedTextStage, doc_freq: np.ndarray, n_docs: int) -> None:
    """Give an untrained ``stage`` the document frequencies of ``n_docs`` texts, as learning
    them would (its weights stay zero)."""
    rows = np.flatnonzero(doc_freq)
    k = len(stage.labels)
    load_arrays(stage, rows=rows, weights=np.zeros((rows.size, k)),
                grad_sq=np.zeros((rows.size, k)), doc_freq=doc_freq[rows], n_docs=n_docs,
                bias=np.zeros(k), bias_grad_sq=np.zeros(k))


def feature_relation(stage: HashedTextStage, texts: Sequence[str]) -> Columns:
    """``X(e, f, v)``: each text's normalised TF-IDF vector as the stage computes it to answer,
    plus the bias feature; ``e`` numbers the texts from 0."""
    feats = _hashed(stage, texts)
    sizes = np.array([len(i) for i, _ in feats], dtype=np.int64)
    index = np.concatenate([i for i, _ in feats]) if feats else np.empty(0, np.int64)
    raw = np.concatenate([v for _, v in feats]) if feats else np.empty(0, np.float32)
    values = stage._idf_weighted(index, raw).astype(np.float64)
    doc = np.repeat(np.arange(len(texts)), sizes)
    norm = np.sqrt(np.bincount(doc, weights=values * values, minlength=len(texts)))
    values = values / np.where(norm > 0, norm, 1.0)[doc]
    n = len(texts)
    return {"e": np.concatenate([doc, np.arange(n)]).astype(np.int64),
            "f": np.concatenate([index, np.full(n, BIAS)]).astype(np.int64),
            "v": np.concatenate([values, np.ones(n)])}


def n_features_of(stage: HashedTextStage, texts: Sequence[str]) -> np.ndarray:
    """How many hashed features each text has (0: nothing the stage can read)."""
    return np.array([len(i) for i, _ in _hashed(stage, texts)], dtype=np.int64)


def stage_from_weights(stage: HashedTextStage, weights: Columns, doc_freq: np.ndarray,
                       n_docs: int) -> None:
    """Load trained ``W(f, c, v, g2)`` (``f == BIAS``: the bias) and the IDF counts into
    ``stage``."""
    k = len(stage.labels)
    f, c = weights["f"].astype(np.int64), weights["c"].astype(np.int64)
    rows = np.unique(f[f != BIAS])
    w = np.zeros((rows.size, k))
    g2 = np.zeros((rows.size, k))
    at = np.searchsorted(rows, f[f != BIAS])
    w[at, c[f != BIAS]] = weights["v"][f != BIAS]
    g2[at, c[f != BIAS]] = weights["g2"][f != BIAS]
    bias, bias_g2 = np.zeros(k), np.zeros(k)
    bias[c[f == BIAS]] = weights["v"][f == BIAS]
    bias_g2[c[f == BIAS]] = weights["g2"][f == BIAS]
    load_arrays(stage, rows=rows, weights=w, grad_sq=g2, doc_freq=doc_freq[rows], n_docs=n_docs,
                bias=bias, bias_grad_sq=bias_g2)

