"""The cheapest stage: hashed n-gram features with online IDF and an incremental softmax regression.

It learns in River's manner (features and weights learned one event at a time, nothing fitted in
advance) but over numpy arrays instead of dicts, which makes it much faster than River's own
dict-based pipelines on long texts (``streamcascade bench river`` compares it with the ``river``
stage, which wraps River's estimators). The softmax head is
:class:`~streamcascade.models.stages.head.SoftmaxHead`, over sparse rows.

Nothing about the stream is known before it runs:

- features are *hashed* (a stable CRC32 of each token; bigrams combine two token hashes), so there
  is no vocabulary to fit;
- document frequencies for IDF are counted only from the texts the stage has *learned* from, so a
  token contributes IDF information only after a labelled event containing it has been seen;
- weights start at zero (uniform probabilities) and move by AdaGrad, per event.

>>> from streamcascade.models.types import LabelSet
>>> stage = HashedTextStage(LabelSet(("neg", "pos")), n_features=2**12)
>>> stage.predict_proba(["great film"]).round(2).tolist()
[[0.5, 0.5]]
>>> for _ in range(5):
...     stage.learn(["great film", "awful film"], [1, 0])
>>> int(stage.predict_proba(["great acting"]).argmax())
1
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Sequence

import numpy as np

from streamcascade.models.costs import cost_of_parameters
from streamcascade.models.errors import ConfigurationError, ModelStateError
from streamcascade.models.lru import LRUCache
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.head import SoftmaxHead
from streamcascade.models.state import expect, pack_state, unpack_state
from streamcascade.models.types import LabelSet

_TOKEN = re.compile(r"\w+")
_MARKUP = re.compile(r"<[^>]{0,20}>")
_BIGRAM_MIX = np.uint64(0x9E3779B1)
_CACHE_SIZE = 4096


class HashedTextStage(Stage):
    """An online linear text classifier over hashed unigram and bigram TF-IDF features.

    Parameters
    ----------
    labels
        The task's labels (two or more).
    name
        The stage's name in decisions and state.
    n_features
        Width of the hashing space (a power of two is usual).
    bigrams
        Also hash adjacent token pairs ("not good").
    idf
        Weight features by an IDF counted online from learned texts.
    learning_rate
        AdaGrad's base step.
    l2
        L2 penalty on the weights touched by each update.
    char_ngrams
        If > 0, also hash the character n-grams (3 up to this length) of each distinct token,
        with word-boundary marks: robust to misspellings and obfuscated words, at a higher cost.
    cost
        Price per event in paper units; by default the parameter count over BERT-base's.
    """

    batch_invariant = True

    def __init__(
        self,
        labels: LabelSet,
        name: str = "hashed",
        n_features: int = 2**20,
        bigrams: bool = True,
        idf: bool = True,
        learning_rate: float = 0.4,
        l2: float = 0.0,
        char_ngrams: int = 0,
        cost: float | None = None,
    ) -> None:
        if n_features < 16:
            raise ConfigurationError(f"n_features must be at least 16, got {n_features}")
        if learning_rate <= 0:
            raise ConfigurationError(f"learning_rate must be positive, got {learning_rate}")
        self.labels = labels
        self.name = name
        self.n_features = int(n_features)
        self.bigrams = bigrams
        self.idf = idf
        self.learning_rate = float(learning_rate)
        self.l2 = float(l2)
        self.char_ngrams = int(char_ngrams)
        k = len(labels)
        self.cost = float(cost) if cost is not None else cost_of_parameters(self.n_features * k + k)
        # float32 weights: a million hashed rows per class would take twice the memory in float64.
        self.head = SoftmaxHead(self.n_features, k, learning_rate=self.learning_rate, l2=self.l2,
                                dtype=np.float32, eps=1e-6)
        self._reset()
        # Counters for throughput reports; not learned state.
        self.predict_seconds = 0.0
        self.learn_seconds = 0.0
        self.n_predicted = 0
        self.n_learned = 0
        self._features_cache: LRUCache[str, tuple[np.ndarray, np.ndarray]] = LRUCache(_CACHE_SIZE)

    def _reset(self) -> None:
        self.head.reset()
        self.doc_freq = np.zeros(self.n_features, dtype=np.uint32)
        self.n_docs = 0
        # Rows that learning has written (weights, squared gradients, document frequencies): the
        # snapshot stores only these. Kept as learning goes: finding them by scanning the arrays
        # took 20 ms of a warm HateSpeech cascade's 48 ms snapshot.
        self.touched = np.zeros(self.n_features, dtype=bool)

    # -- features ---------------------------------------------------------------------------------

    def _hashed_counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Unique hashed feature indices of ``text`` and their log-scaled counts (cached)."""
        return self._hashed_counts_many([text])[0]

    def _token_hashes(self, text: str) -> tuple[list[int], list[int]]:
        """Stable hashes of the text's tokens, in order, and (``char_ngrams``) of the n-grams of
        its distinct tokens."""
        tokens = _TOKEN.findall(_MARKUP.sub(" ", text).lower())
        words = [zlib.crc32(t.encode()) for t in tokens]
        if self.char_ngrams < 3:
            return words, []
        return words, [zlib.crc32(f"<{t}>"[i:i + n].encode(), 0x5C5C) for t in set(tokens)
                       for n in range(3, self.char_ngrams + 1) for i in range(len(t) + 3 - n)]

    def _hashed_counts_many(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`_hashed_counts` of each text. The texts not in the cache are hashed together:
        a micro-batch pays numpy's per-call overhead once, not once per text."""
        out = [self._features_cache.get(t) for t in texts]
        todo = list(dict.fromkeys(t for t, got in zip(texts, out, strict=True) if got is None))
        if not todo:  # every text was cached
            return [got for got in out if got is not None]
        hashes, docs, words = [], [], []  # words: whether a hash is a token's (bigrams pair those)
        for doc, text in enumerate(todo):
            tokens, grams = self._token_hashes(text)
            hashes += tokens + grams
            docs += [doc] * (len(tokens) + len(grams))
            words += [True] * len(tokens) + [False] * len(grams)
        h = np.asarray(hashes, dtype=np.uint64)
        d = np.asarray(docs, dtype=np.int64)
        if self.bigrams and h.size > 1:
            w = np.asarray(words, dtype=bool)
            # Adjacent tokens of the same text (never across two texts, nor over n-grams).
            pair = (d[:-1] == d[1:]) & w[:-1] & w[1:]
            pairs = (h[:-1][pair] * _BIGRAM_MIX) ^ (h[1:][pair] + np.uint64(1))
            h, d = np.concatenate([h, pairs]), np.concatenate([d, d[:-1][pair]])
        key = d * self.n_features + (h % np.uint64(self.n_features)).astype(np.int64)
        unique, counts = np.unique(key, return_counts=True)
        bounds = np.searchsorted(unique // self.n_features, np.arange(len(todo) + 1))
        index = (unique % self.n_features).astype(np.int64)
        values = np.log1p(counts).astype(np.float32)
        fresh = {}
        for doc, text in enumerate(todo):
            lo, hi = bounds[doc], bounds[doc + 1]
            fresh[text] = (index[lo:hi].copy(), values[lo:hi].copy())
            self._features_cache.put(text, fresh[text])
        return [got if got is not None else fresh[t] for t, got in zip(texts, out, strict=True)]

    def _idf_weighted(self, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Log counts scaled by one plus the IDF counted on the texts learned so far (any number
        of texts' features, concatenated)."""
        if not (self.idf and self.n_docs):
            return counts
        idf = np.log((1.0 + self.n_docs) / (1.0 + self.doc_freq[index])).astype(np.float32)
        return counts * idf + counts

    def _vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        index, counts = self._hashed_counts(text)
        values = self._idf_weighted(index, counts)
        norm = float(np.sqrt(values @ values))
        return index, (values / norm if norm > 0 else values)

    def familiarity(self, texts: Sequence[str]) -> np.ndarray:
        """Per text, the share of its features seen in learned texts: shape ``(n, 1)``.

        A cheap input for the deferral policy: a confident answer about a text made mostly of
        features the stage never learned from deserves less trust than its probabilities say.
        """
        feats = self._hashed_counts_many(texts)
        sizes = np.array([len(i) for i, _ in feats])
        index = np.concatenate([i for i, _ in feats]) if feats else np.empty(0, np.int64)
        seen = np.bincount(np.repeat(np.arange(len(texts)), sizes),
                           weights=self.touched[index], minlength=len(texts))
        return (seen / np.maximum(sizes, 1))[:, None]

    def token_buckets(self, text: str) -> np.ndarray:
        """The hashed feature indices of ``text`` (for inspection and tests)."""
        return self._hashed_counts(text)[0]

    # -- the Stage contract -----------------------------------------------------------------------

    def _proba_many(self, texts: Sequence[str]) -> np.ndarray:
        """The head's probabilities of each text's :meth:`_vector`, for all texts at once."""
        feats = self._hashed_counts_many(texts)
        sizes = np.array([len(i) for i, _ in feats])
        index = np.concatenate([i for i, _ in feats])
        values = self._idf_weighted(index, np.concatenate([v for _, v in feats]))
        doc = np.repeat(np.arange(len(texts)), sizes)
        norm = np.sqrt(np.bincount(doc, weights=values * values, minlength=len(texts)))
        values = values / np.where(norm > 0, norm, 1.0)[doc]
        return self.head.proba_sparse(index, values, doc, len(texts))

    def predict_proba(self, texts: Sequence[str],
                      upstream: np.ndarray | None = None) -> np.ndarray:
        # ``upstream`` is not used: words alone are this stage's inputs.
        start = time.perf_counter()
        out = self._proba_many(texts) if len(texts) else np.empty((0, len(self.labels)))
        self.predict_seconds += time.perf_counter() - start
        self.n_predicted += len(texts)
        return out

    def learn(self, texts: Sequence[str], targets: Sequence[int],
              upstream: np.ndarray | None = None) -> None:
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts for {len(targets)} targets")
        start = time.perf_counter()
        k = len(self.labels)
        for text, target in zip(texts, targets, strict=True):
            if not 0 <= int(target) < k:
                raise ValueError(f"target {target} is not a label index (0..{k - 1})")
            if self.idf:
                self.doc_freq[self._hashed_counts(text)[0]] += 1
                self.n_docs += 1
            index, values = self._vector(text)
            self.touched[index] = True
            self.head.learn_one(values, int(target), rows=index)
        self.learn_seconds += time.perf_counter() - start
        self.n_learned += len(texts)

    # -- state ------------------------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        return {"kind": "hashed_text", "n_features": self.n_features,
                "labels": list(self.labels.names), "bigrams": self.bigrams, "idf": self.idf,
                "char_ngrams": self.char_ngrams}

    def state_bytes(self) -> bytes:
        # Only rows that were ever updated are stored: the state of a hashed model is sparse.
        rows = np.flatnonzero(self.touched).astype(np.int64)
        return pack_state({**self._config(), "n_docs": self.n_docs},
                          {"rows": rows, "doc_freq": self.doc_freq[rows], **self.head.arrays(rows)})

    def load_state(self, data: bytes) -> None:
        meta, arrays = unpack_state(data)
        for key, value in self._config().items():
            expect(meta, key, value)
        try:
            rows = arrays["rows"]
            doc_freq = arrays["doc_freq"].reshape(rows.size)
            n_docs = int(meta["n_docs"])
            self.head.load_arrays(arrays, rows)  # checks everything before it changes anything
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelStateError(f"hashed stage state is malformed: {exc}") from None
        self.doc_freq[:] = 0
        self.doc_freq[rows] = doc_freq
        self.touched[:] = False
        self.touched[rows] = True
        self.n_docs = n_docs
