"""The fine-tuned stage: a sentence encoder whose top layers learn the task from the stream.

The encoder (MiniLM-L6 by default) is cut below its last ``train_layers`` layers
(:mod:`streamcascade.onnx_exports.split`). Events are always answered by ONNX Runtime: the frozen
bottom, then the top of the *published snapshot*, then a softmax head over the embedding and
(when ``stack``) the previous stage's centred log-probabilities. Weights in training never answer.

Learning has two speeds:

- the head learns every demonstration at once, with AdaGrad steps, as the ONNX stage's head does
  (so the stage moves with every label, and is never worse than a frozen encoder with a head);
- the top layers and a head of their own are fine-tuned with torch on a background thread
  (:mod:`.finetune_trainer`, :mod:`.finetune_runner`), never on the thread that answers. Every
  ``snapshot_every`` demonstrations the trainer's weights are exported to ONNX, checked against
  torch, and become the next snapshot; the stage swaps to it between batches (in :meth:`learn`,
  or :meth:`load_state` on a worker that follows the state topic), and its head starts again from
  the head trained with that top.

So which snapshot answers an event is set by the number of demonstrations learned before it, the
same in a replay as in an operator, as long as training keeps up. ``streamcascade replay`` sets
``lockstep`` unless told otherwise (the stream waits for each snapshot at its point, so results
never depend on timing); an operator leaves it off: the stream never waits, and a learner that
falls behind drops its oldest waiting demonstrations (:mod:`.finetune_runner`), counted in
:attr:`FineTunedStage.demonstrations_dropped` and the operator's metrics.

A snapshot is taken only if the trainer answered the demonstrations of its window (each before
learning it) with a lower log-loss than the live stage did; otherwise the stage keeps the one it
has (:meth:`FineTunedStage._adopt`).

The snapshot travels in :meth:`state_bytes` (:mod:`.finetune_snapshot`), in the project's state
format, so the state topic that carries every stage's state carries it to every worker.

Each text's bottom hidden states are kept (half precision, bounded LRU by text): the learner is
handed the texts the stage has just answered, and the trainer needs exactly those states.
"""

from __future__ import annotations

import collections
import logging
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamcascade.models.costs import cost_of_parameters
from streamcascade.models.errors import ConfigurationError, ModelFileError, ModelStateError
from streamcascade.models.lru import LRUCache
from streamcascade.models.stages.base import LOG_FLOOR, Stage, check_targets, upstream_logs
from streamcascade.models.stages.finetune_runner import SnapshotRunner
from streamcascade.models.stages.finetune_snapshot import Snapshot, snapshot_from_state
from streamcascade.models.stages.head import SoftmaxHead
from streamcascade.models.stages.onnx_encoder import CPU, choose_providers, threads_from_env
from streamcascade.models.state import expect, pack_state, unpack_state
from streamcascade.models.types import LabelSet

log = logging.getLogger(__name__)

VARIANTS = ("auto", "fp32", "int8")
TRUNCATIONS = ("head_tail", "head")
_HEAD = "head."
#: The encoder's layers that are fine-tuned unless told otherwise.
DEFAULT_TRAIN_LAYERS = 2


class FineTunedStage(Stage):
    """A sentence encoder fine-tuned online and served from ONNX snapshots, with a head.

    Parameters
    ----------
    labels
        The task's labels.
    name
        The stage's name in decisions and state.
    model
        The encoder (a key of ``onnx_exports/models.json``).
    model_dir
        The split export (see :mod:`streamcascade.onnx_exports.split`); by default
        ``<cache_dir>/onnx/<model>-top<train_layers>``, exported there first if absent.
    train_layers
        How many of the encoder's last layers are fine-tuned (the export's split; by default
        that of ``model_dir``, else :data:`DEFAULT_TRAIN_LAYERS`).
    variant
        ``"int8"``, ``"fp32"`` or ``"auto"`` (int8 on CPU, fp32 on a GPU): the bottom's file and
        the snapshots' graphs.
    max_length, truncation
        Tokens per text, and which are kept of a longer one (as for the ONNX stage).
    stack
        Give the heads the previous stage's log-probabilities beside the embedding.
    batch_size, threads, providers
        ONNX Runtime: texts per call, intra-op threads, execution providers.
    snapshot_every
        Demonstrations between two snapshots.
    decline_worse
        Decline a snapshot that answered its window worse than the live stage (off: every
        snapshot is taken, as a test that needs snapshots at a known cadence wants).
    lockstep
        Wait for each snapshot at its point of the stream (replays); off, the stream never waits.
    max_backlog
        Demonstrations that may wait for training before the oldest are dropped (not in
        lockstep); by default ``snapshot_every``.
    learning_rate, head_learning_rate, weight_decay
        AdamW for the top's weights and for the trained head.
    train_batch, new_per_step, buffer_size
        Examples per training step, how many of them are new at most, and the replay buffer.
    train_threads, device
        torch's threads for training (the answering path keeps the other cores) and its device
        (``"auto"``: CUDA when torch sees one).
    online_learning_rate, l2
        AdaGrad's step and L2 penalty for the head between snapshots.
    hidden_cache_size, cache_size
        Texts whose bottom hidden states, and whose embeddings under the live snapshot, are kept.
    seed
        Seeds the trainer.
    cost
        Price per event in paper units; by default the encoder's parameters over BERT-base's.
    """

    def __init__(
        self,
        labels: LabelSet,
        name: str = "finetune",
        model: str = "minilm-l6",
        model_dir: str | Path | None = None,
        train_layers: int | None = None,
        variant: str = "auto",
        max_length: int = 128,
        truncation: str = "head_tail",
        stack: bool = True,
        batch_size: int = 32,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        snapshot_every: int = 500,
        decline_worse: bool = True,
        lockstep: bool = False,
        max_backlog: int | None = None,
        learning_rate: float = 5e-5,
        head_learning_rate: float = 2e-3,
        weight_decay: float = 0.01,
        train_batch: int = 16,
        new_per_step: int = 8,
        buffer_size: int = 2048,
        train_threads: int = 1,
        device: str = "auto",
        online_learning_rate: float = 0.3,
        l2: float = 1e-5,
        hidden_cache_size: int = 1024,
        cache_size: int = 16384,
        seed: int = 0,
        cost: float | None = None,
    ) -> None:
        from streamcascade.onnx_exports.manifest import default_onnx_dir, load_manifest

        if variant not in VARIANTS:
            raise ConfigurationError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if truncation not in TRUNCATIONS:
            raise ConfigurationError(
                f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        for key, value in (("train_layers", train_layers or 1), ("max_length", max_length),
                           ("batch_size", batch_size), ("snapshot_every", snapshot_every),
                           ("train_batch", train_batch), ("new_per_step", new_per_step),
                           ("buffer_size", buffer_size), ("train_threads", train_threads),
                           ("hidden_cache_size", hidden_cache_size), ("cache_size", cache_size)):
            if int(value) < 1:
                raise ConfigurationError(f"{key} must be at least 1, got {value}")
        for key, rate in (("learning_rate", learning_rate),
                          ("head_learning_rate", head_learning_rate),
                          ("online_learning_rate", online_learning_rate)):
            if not rate > 0:
                raise ConfigurationError(f"{key} must be positive, got {rate}")
        self.labels = labels
        self.name = name
        if model_dir is None:
            from streamcascade.onnx_exports.split import split_dir_name

            layers = DEFAULT_TRAIN_LAYERS if train_layers is None else int(train_layers)
            default = default_onnx_dir() / split_dir_name(model, layers)
            if not (default / "manifest.json").is_file():
                from streamcascade.onnx_exports.split import ensure_split

                log.info("exporting %s split for fine-tuning into %s", model, default)
                default = ensure_split(model, layers)
            model_dir = default
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir)
        split = self.manifest.data.get("split")
        if not isinstance(split, dict) or "n_top" not in split:
            raise ModelFileError(f"{self.model_dir} is not a split export (see "
                                 "streamcascade.onnx_exports.split)")
        self.model = self.manifest.model
        self.train_layers = int(split["n_top"])
        if train_layers is not None and int(train_layers) != self.train_layers:
            raise ConfigurationError(f"{self.model_dir} fine-tunes the last {self.train_layers} "
                                     f"layer(s), not {train_layers}")
        self.truncation = truncation
        self.stack = bool(stack)
        self.batch_size = int(batch_size)
        self.threads = threads if threads is not None else threads_from_env()
        self.providers = list(providers) if providers is not None else None
        self.snapshot_every = int(snapshot_every)
        self.decline_worse = bool(decline_worse)
        self.lockstep = bool(lockstep)
        self.max_backlog = int(max_backlog) if max_backlog is not None else self.snapshot_every
        self.training = {"learning_rate": float(learning_rate),
                         "head_learning_rate": float(head_learning_rate),
                         "weight_decay": float(weight_decay), "batch_size": int(train_batch),
                         "new_per_step": int(new_per_step), "buffer_size": int(buffer_size),
                         "seed": int(seed), "device": device}
        self.train_threads = int(train_threads)
        dims = self.manifest.dimensions
        self.dim = dims["hidden_size"]
        self.max_length = min(int(max_length), dims.get("max_length", int(max_length)))
        k = len(labels)
        self.n_inputs = self.dim + (k if self.stack else 0)

        self.session_providers = choose_providers(self.providers)
        on_gpu = self.session_providers[0] != CPU
        use_int8 = variant == "int8" or (variant == "auto" and not on_gpu)
        self.variant_in_use = "int8" if use_int8 else "fp32"
        # Dynamic int8 quantisation scales a batch's activations together.
        self.batch_invariant = self.variant_in_use == "fp32"
        bottom_kind = f"bottom.{self.variant_in_use}"
        if not self.manifest.has(bottom_kind):  # no layer below the top: nothing to quantise
            bottom_kind = "bottom.fp32"
        self._bottom = self._open_session(self.manifest.verified_path(bottom_kind),
                                          ["input_ids", "attention_mask"])
        self._base_top = self._open_session(
            self.manifest.verified_path(f"top.{self.variant_in_use}"), ["hidden", "attention_mask"])
        self._tokenizer = self._open_tokenizer(self.manifest.verified_path("tokenizer"))
        self.cost = (float(cost) if cost is not None
                     else cost_of_parameters(dims["parameters"] + k * (self.n_inputs + 1)))
        self.online_learning_rate = float(online_learning_rate)
        self.l2 = float(l2)
        self.head = SoftmaxHead(self.n_inputs, k, learning_rate=self.online_learning_rate,
                                l2=self.l2)
        self.snapshot = Snapshot(0, 0, self.variant_in_use)
        self._top = self._base_top
        self._hidden: LRUCache[str, np.ndarray] = LRUCache(int(hidden_cache_size))
        self._embeddings: LRUCache[str, np.ndarray] = LRUCache(int(cache_size))
        self._runner: SnapshotRunner[Any, tuple[Snapshot, Any]] | None = None
        self._top_shapes: dict[str, tuple[int, ...]] | None = None
        self.n_learned = 0
        self._online_losses: collections.deque[float] = collections.deque(
            maxlen=self.snapshot_every)
        # Counters for reports; not learned state.
        self.predict_seconds = 0.0
        self.learn_seconds = 0.0
        self.wait_seconds = 0.0  # the stream waiting for a snapshot (lockstep only)
        self.n_predicted = 0
        self.snapshots_published = 0
        self.snapshots_declined = 0
        self._past = {"train_seconds": 0.0, "snapshot_seconds": 0.0, "dropped": 0}

    # -- set-up -----------------------------------------------------------------------------------

    def _open_session(self, source: Path | bytes, inputs: list[str]) -> Any:
        session, self.session_providers = open_session(
            source, inputs, self.session_providers, self.threads,
            self.manifest.disabled_optimizers)
        return session

    def _open_tokenizer(self, path: Path) -> Any:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise ModelFileError(f"cannot read tokenizer {path}: {exc}") from None
        tokenizer.no_padding()
        if self.truncation == "head":
            tokenizer.enable_truncation(self.max_length)
        else:
            tokenizer.no_truncation()
        return tokenizer

    # -- encoding ---------------------------------------------------------------------------------

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch(list(texts))
        if self.truncation == "head":
            return [e.ids for e in encodings]
        n, head = self.max_length, self.max_length // 4
        return [e.ids if len(e.ids) <= n else e.ids[:head] + e.ids[len(e.ids) - (n - head):]
                for e in encodings]

    def _buckets(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices by length, ``batch_size`` at a time (each padded to its own longest)."""
        order = np.argsort(lengths, kind="stable")
        return [order[lo:lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]

    def hidden_states(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The bottom's hidden states of each text, ``(tokens, dim)`` in half precision (the
        precision in which they are kept and trained on, so that answers do not depend on
        whether they were kept)."""
        out: list[np.ndarray | None] = []
        missing: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be str, got {type(text).__name__} at position {row}")
            cached = self._hidden.get(text)
            out.append(cached)
            if cached is None:
                missing.setdefault(text, []).append(row)
        if missing:
            unique = list(missing)
            ids = self._token_ids(unique)
            lengths = np.array([len(i) for i in ids], dtype=np.int64)
            for rows in self._buckets(lengths):
                width = int(lengths[rows].max())
                batch = np.zeros((len(rows), width), dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for r, i in enumerate(rows):
                    batch[r, :lengths[i]] = ids[i]
                    mask[r, :lengths[i]] = 1
                hidden = self._bottom.run(None, {"input_ids": batch, "attention_mask": mask})[0]
                for r, i in enumerate(rows):
                    state = hidden[r, :lengths[i]].astype(np.float16)
                    self._hidden.put(unique[i], state)
                    for row in missing[unique[i]]:
                        out[row] = state
        return [s for s in out if s is not None]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings under the live snapshot, shape ``(len(texts), dim)``."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            cached = self._embeddings.get(text) if isinstance(text, str) else None
            if cached is None:
                missing.setdefault(text, []).append(row)
            else:
                out[row] = cached
        if missing:
            unique = list(missing)
            states = self.hidden_states(unique)
            lengths = np.array([len(s) for s in states], dtype=np.int64)
            for rows in self._buckets(lengths):
                width = int(lengths[rows].max())
                hidden = np.zeros((len(rows), width, self.dim), dtype=np.float32)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for r, i in enumerate(rows):
                    hidden[r, :lengths[i]] = states[i]
                    mask[r, :lengths[i]] = 1
                vectors = self._top.run(None, {"hidden": hidden, "attention_mask": mask})[0]
                for r, i in enumerate(rows):
                    out[missing[unique[i]]] = vectors[r]
                    self._embeddings.put(unique[i], vectors[r])
        return out

    # -- the Stage contract -----------------------------------------------------------------------

    def _features(self, texts: Sequence[str], logs: np.ndarray) -> np.ndarray:
        embedding = self.embed(texts).astype(np.float64)
        return np.hstack([embedding, logs]) if self.stack else embedding

    def predict_proba(self, texts: Sequence[str],
                      upstream: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        if not len(texts):
            return np.empty((0, len(self.labels)))
        logs = upstream_logs(upstream, len(texts), len(self.labels))
        out = self.head.proba(self._features(texts, logs))
        self.predict_seconds += time.perf_counter() - start
        self.n_predicted += len(texts)
        return out

    def learn(self, texts: Sequence[str], targets: Sequence[int],
              upstream: np.ndarray | None = None) -> None:
        check_targets(texts, targets, self.labels)
        if not len(texts):
            return
        start = time.perf_counter()
        logs = upstream_logs(upstream, len(texts), len(self.labels))
        features = self._features(texts, logs)
        for x, target in zip(features, targets, strict=True):
            # The live model's loss on each demonstration before learning it, for the gate.
            self._online_losses.append(-float(np.log(max(self.head.proba_one(x)[int(target)],
                                                         LOG_FLOOR))))
            self.head.learn_one(x, int(target))
        runner = self._runner or self._start_runner()  # (its cadence starts at n_learned)
        self.n_learned += len(texts)
        from streamcascade.models.stages.finetune_trainer import Example

        ups = logs.astype(np.float32) if self.stack else np.zeros(logs.shape, np.float32)
        runner.submit([Example(state, int(target), up) for state, target, up in
                       zip(self.hidden_states(texts), targets, ups, strict=True)])
        self.learn_seconds += time.perf_counter() - start
        # Between two batches: the one place a new snapshot may start answering.
        due = runner.due()
        if self.lockstep and due > self.snapshot.number:
            waited = time.perf_counter()
            ready = runner.wait_for(due)
            self.wait_seconds += time.perf_counter() - waited
        else:
            ready = runner.take_ready()
        if ready is not None:
            self._adopt(*ready)

    # -- training and snapshots -------------------------------------------------------------------

    def _start_runner(self) -> SnapshotRunner[Any, tuple[Snapshot, Any]]:
        """The trainer and its thread, going on from the live snapshot's weights."""
        from streamcascade.models.stages.finetune_trainer import TopTrainer
        from streamcascade.onnx_exports.export import PARITY_SENTENCES
        from streamcascade.onnx_exports.split import export_top, load_top

        settings: dict[str, Any] = dict(self.training)
        trainer = TopTrainer(load_top(self.manifest), len(self.labels), stack=self.stack,
                             learning_rate=settings["learning_rate"],
                             head_learning_rate=settings["head_learning_rate"],
                             weight_decay=settings["weight_decay"],
                             batch_size=settings["batch_size"],
                             new_per_step=settings["new_per_step"],
                             buffer_size=settings["buffer_size"], seed=settings["seed"],
                             device=settings["device"])
        snap = self.snapshot
        if snap.number and snap.head_weights is not None and snap.head_bias is not None:
            trainer.load(snap.top, snap.head_weights, snap.head_bias)
        # The parity check's inputs: real sentences through the bottom that serves.
        states = self.hidden_states(list(PARITY_SENTENCES))
        width = max(len(s) for s in states)
        hidden = np.zeros((len(states), width, self.dim), dtype=np.float32)
        mask = np.zeros((len(states), width), dtype=np.int64)
        for row, state in enumerate(states):
            hidden[row, :len(state)] = state
            mask[row, :len(state)] = 1
        variant, threads = self.variant_in_use, self.train_threads
        # The thread holds no reference to the stage, so that a stage dropped stops its thread.
        providers, ort_threads = self.session_providers, self.threads
        disabled = self.manifest.disabled_optimizers

        def setup() -> None:
            import torch

            # The answering path keeps the other cores.
            torch.set_num_threads(threads)

        def make(number: int, covers: int) -> tuple[Snapshot, Any]:
            trainer.flush()
            window = trainer.take_window_loss()
            exported = export_top(trainer.top_copy(), hidden, mask, variant=variant)
            weights, bias = trainer.head_arrays()
            snapshot = Snapshot(number, covers, variant, exported.onnx, weights, bias,
                                trainer.top_arrays(), exported.parity, window)
            session, _ = open_session(exported.onnx, ["hidden", "attention_mask"], providers,
                                      ort_threads, disabled)
            return snapshot, session

        runner: SnapshotRunner[Any, tuple[Snapshot, Any]] = SnapshotRunner(
            trainer.add, make, every=self.snapshot_every, start=self.n_learned,
            lockstep=self.lockstep, max_backlog=self.max_backlog,
            chunk=settings["new_per_step"], setup=setup)
        weakref.finalize(self, runner.close)
        self._runner = runner
        return runner

    def _adopt(self, snapshot: Snapshot, session: Any) -> None:
        """Answer with ``snapshot`` from now on, its head starting from the one trained with it;
        unless the live model answered the demonstrations of the snapshot's window better than
        the trainer did (both measured before learning each one): a snapshot never makes the
        stage worse on the stream it has seen, whatever its training did (too few steps for its
        head, a diverging run)."""
        assert snapshot.head_weights is not None and snapshot.head_bias is not None
        live = float(np.mean(self._online_losses)) if self._online_losses else None
        if (self.decline_worse and snapshot.window_loss is not None and live is not None
                and snapshot.window_loss > live):
            self.snapshots_declined += 1
            log.info("stage %s keeps snapshot %d: snapshot %d's log-loss on its window, %.4f, "
                     "is above the live model's, %.4f", self.name, self.snapshot.number,
                     snapshot.number, snapshot.window_loss, live)
            return
        self._top = session
        self.snapshot = snapshot
        self.head.weights[:] = snapshot.head_weights
        self.head.bias[:] = snapshot.head_bias
        self._embeddings.clear()
        self.snapshots_published += 1
        log.info("stage %s answers with snapshot %d (%d demonstrations)", self.name,
                 snapshot.number, snapshot.covers)

    def _stop_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            for key, value in (("train_seconds", self._runner.train_seconds),
                               ("snapshot_seconds", self._runner.snapshot_seconds),
                               ("dropped", self._runner.dropped)):
                self._past[key] += value
            self._runner = None

    @property
    def train_seconds(self) -> float:
        """Seconds spent training and making snapshots (on the training thread)."""
        runner = self._runner
        now = (runner.train_seconds + runner.snapshot_seconds) if runner else 0.0
        return self._past["train_seconds"] + self._past["snapshot_seconds"] + now

    @property
    def demonstrations_dropped(self) -> int:
        """Demonstrations the trainer dropped because it was behind (never in lockstep)."""
        return int(self._past["dropped"]) + (self._runner.dropped if self._runner else 0)

    @property
    def training_backlog(self) -> int:
        """Demonstrations waiting for the trainer."""
        return self._runner.backlog if self._runner else 0

    def close(self) -> None:
        """Stop training (the stage keeps answering with its snapshot)."""
        self._stop_runner()

    # -- state ------------------------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        return {"kind": "finetune", "model": self.model, "train_layers": self.train_layers,
                "dim": self.dim, "stack": self.stack, "truncation": self.truncation,
                "labels": list(self.labels.names)}

    def state_bytes(self) -> bytes:
        # Caches are not state; the weights in training are not either (only what was published).
        arrays = {_HEAD + key: value for key, value in self.head.arrays().items()}
        arrays.update(self.snapshot.arrays())
        return pack_state({**self._config(), "n_learned": self.n_learned,
                           "snapshot": self.snapshot.meta()}, arrays)

    def _expected_top_shapes(self) -> dict[str, tuple[int, ...]] | None:
        if self._top_shapes is None and self.manifest.has("top.weights"):
            from safetensors import safe_open

            with safe_open(str(self.manifest.verified_path("top.weights")), "numpy") as fh:
                names = fh.keys()  # (the file handle is not iterable)
                self._top_shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in names}
        return self._top_shapes

    def load_state(self, data: bytes) -> None:
        meta, arrays = unpack_state(data)
        for key, value in self._config().items():
            expect(meta, key, value)
        try:
            n_learned = int(meta["n_learned"])
        except (KeyError, TypeError, ValueError):
            raise ModelStateError("fine-tuned stage state has no demonstration count") from None
        snapshot = snapshot_from_state(meta.get("snapshot"), arrays, self.n_inputs,
                                       len(self.labels), self._expected_top_shapes())
        head = SoftmaxHead(self.n_inputs, len(self.labels),
                           learning_rate=self.online_learning_rate, l2=self.l2)
        try:
            head.load_arrays({key[len(_HEAD):]: value for key, value in arrays.items()
                              if key.startswith(_HEAD)})
        except (KeyError, ValueError) as exc:
            raise ModelStateError(f"fine-tuned stage head is malformed: {exc}") from None
        if not all(np.isfinite(a).all() for a in head.arrays().values()):
            raise ModelStateError("fine-tuned stage head holds non-finite numbers")
        if snapshot.onnx is None:
            session = self._base_top
        elif snapshot.sha256 == self.snapshot.sha256:
            session = self._top  # the same graph: no need to load it again
        else:
            try:
                session = self._open_session(snapshot.onnx, ["hidden", "attention_mask"])
            except ModelFileError as exc:
                raise ModelStateError(f"fine-tuned stage snapshot {snapshot.number}: {exc}") \
                    from None
        loaded = head.arrays()
        if (n_learned == self.n_learned and snapshot.number == self.snapshot.number
                and snapshot.sha256 == self.snapshot.sha256
                and all(np.array_equal(v, loaded[k]) for k, v in self.head.arrays().items())):
            # The state it holds (put back after another state was refused): training goes on.
            return
        # Everything checked: replace. The trainer goes on from the loaded snapshot.
        self._stop_runner()
        if session is not self._top:
            self._embeddings.clear()
        if snapshot.number != self.snapshot.number:
            log.info("stage %s answers with snapshot %d (%d demonstrations), loaded", self.name,
                     snapshot.number, snapshot.covers)
        self._top, self.snapshot, self.head = session, snapshot, head
        self.n_learned = n_learned
        self._online_losses.clear()  # (those of the head just replaced)

    def __repr__(self) -> str:
        return (f"FineTunedStage(name={self.name!r}, model={self.model!r}, "
                f"train_layers={self.train_layers}, variant={self.variant_in_use!r}, "
                f"snapshot={self.snapshot.number}, lockstep={self.lockstep}, "
                f"labels={list(self.labels.names)})")


def open_session(source: Path | bytes, inputs: list[str], providers: list[str],
                 threads: int | None, disabled_optimizers: list[str]) -> tuple[Any, list[str]]:
    """An ONNX Runtime session of a file or of a graph's bytes, and the providers it uses.

    A provider other than the CPU that cannot start falls back to the CPU with a warning; a graph
    that cannot be loaded, or that does not take ``inputs``, is a :class:`ModelFileError`.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    model = source if isinstance(source, bytes) else str(source)
    try:
        session = ort.InferenceSession(model, options, providers=providers,
                                       disabled_optimizers=disabled_optimizers)
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        if providers != [CPU]:
            log.warning("ONNX Runtime could not start %s (%s); falling back to CPU",
                        providers[0], exc)
            return open_session(source, inputs, [CPU], threads, disabled_optimizers)
        where = "a snapshot graph" if isinstance(source, bytes) else str(source)
        raise ModelFileError(f"ONNX Runtime cannot load {where}: {exc}") from None
    names = [i.name for i in session.get_inputs()]
    if names != inputs:
        raise ModelFileError(f"ONNX graph takes inputs {names}, not {inputs}")
    return session, list(session.get_providers())
