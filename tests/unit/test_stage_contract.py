"""The Stage contract, checked against every registered stage (River's ``check_estimator`` idea).

Each test runs once per name in ``stage_names()`` and per task (two labels, seven labels), so a
newly registered stage gets every check without writing one. A stage that needs files or options
to be built gets them from :data:`STAGE_OPTIONS`; a registered stage with no entry there fails the
suite (it is not skipped): register a stage, add its options here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from encoder_export import encoder_export_dir
from tiny_encoder import tiny_split_dir

from streamcascade.errors import ModelStateError
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.registry import make_stage, stage_names
from streamcascade.models.tasks import TASKS, Task

BINARY, MULTICLASS = TASKS["imdb"], TASKS["isear"]

#: Per stage name: its factory's options, given the pytest request (for fixtures such as files).
#: The options keep each stage's answers a function of its inputs and state alone.
STAGE_OPTIONS: dict[str, Callable[[pytest.FixtureRequest], dict[str, Any]]] = {
    "hashed": lambda request: {"n_features": 2**12},
    "onnx": lambda request: {"model_dir": request.getfixturevalue("encoder_dir"), "threads": 2,
                             "variant": "fp32", "shared_cache": False},
    "river": lambda request: {},
    "finetune": lambda request: {
        "model_dir": tiny_split_dir(request.getfixturevalue("tmp_path_factory")),
        "variant": "fp32", "threads": 2, "snapshot_every": 10**6},
}

Builder = Callable[..., Stage]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encoder_export_dir(tmp_path_factory)


@pytest.fixture
def build(request: pytest.FixtureRequest) -> Callable[[str, Task], Stage]:
    """``build(name, task)``: a fresh stage ``name`` made by the registry with its options."""

    def make(name: str, task: Task) -> Stage:
        if name not in STAGE_OPTIONS:
            pytest.fail(f"stage {name!r} is registered but {__name__}.STAGE_OPTIONS has no "
                        "entry for it: add its options so that the contract is checked")
        return make_stage(name, task, **STAGE_OPTIONS[name](request))

    return make


@pytest.fixture(params=stage_names())
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[BINARY, MULTICLASS], ids=["binary", "multiclass"])
def task(request: pytest.FixtureRequest) -> Task:
    return request.param  # type: ignore[no-any-return]


# Per label, a topic word that appears only in its texts, amid shared filler.
_TOPICS = ["football", "pancake", "thunder", "violin", "tractor", "galaxy", "glacier"]
_FILLER = ["today", "someone said", "the story of", "we talked about", "again the", "a note on"]


def labelled(task: Task, per_label: int = 4, seed: int = 0) -> tuple[list[str], list[int]]:
    """Short texts whose label a topic word gives away, in a shuffled order."""
    rng = np.random.default_rng(seed)
    rows = [(f"{_FILLER[int(rng.integers(len(_FILLER)))]} {_TOPICS[label]} number {i}", label)
            for label in range(len(task.labels)) for i in range(per_label)]
    order = rng.permutation(len(rows))
    return [rows[i][0] for i in order], [rows[i][1] for i in order]


UNSEEN = ["words this stage never learned from", "", "football and pancake and thunder"]


def trained(build: Builder, name: str, task: Task) -> tuple[Stage, list[str]]:
    stage = build(name, task)
    texts, targets = labelled(task)
    for lo in range(0, len(texts), 5):
        stage.learn(texts[lo:lo + 5], targets[lo:lo + 5])
    return stage, texts + UNSEEN


def assert_valid_answers(proba: np.ndarray, n: int, task: Task) -> None:
    assert isinstance(proba, np.ndarray)
    assert proba.shape == (n, len(task.labels))
    assert np.isfinite(proba).all()
    assert (proba >= 0).all() and (proba <= 1).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


# -- the checks -----------------------------------------------------------------------------------


def test_is_what_the_registry_says(build: Builder, name: str, task: Task) -> None:
    stage = build(name, task)
    assert isinstance(stage, Stage)
    assert stage.name == name
    assert stage.labels == task.labels
    assert np.isfinite(stage.cost) and stage.cost > 0


def test_untrained_answers_are_valid(build: Builder, name: str, task: Task) -> None:
    stage = build(name, task)
    texts = labelled(task)[0] + UNSEEN
    assert_valid_answers(stage.predict_proba(texts), len(texts), task)
    assert_valid_answers(stage.predict_proba([]), 0, task)


def test_trained_answers_are_valid_with_and_without_upstream(build: Builder, name: str,
                                                             task: Task) -> None:
    stage, texts = trained(build, name, task)
    assert_valid_answers(stage.predict_proba(texts), len(texts), task)
    assert_valid_answers(stage.predict_proba(texts[:1]), 1, task)
    assert_valid_answers(stage.predict_proba([]), 0, task)
    # A later stage of the cascade is handed the previous stage's answers for the same texts.
    upstream = np.random.default_rng(1).dirichlet(np.ones(len(task.labels)), size=len(texts))
    assert_valid_answers(stage.predict_proba(texts, upstream), len(texts), task)
    stage.learn(texts[:3], [0, 1, 0], upstream[:3])
    assert_valid_answers(stage.predict_proba(texts, upstream), len(texts), task)


def test_learning_moves_answers_toward_the_label(build: Builder, name: str, task: Task) -> None:
    stage = build(name, task)
    texts, targets = labelled(task)
    rows = np.arange(len(texts))
    before = stage.predict_proba(texts)[rows, targets]
    for _ in range(3):
        stage.learn(texts, targets)
    after = stage.predict_proba(texts)[rows, targets]
    assert (after > before).all(), (before, after)


def test_predicting_does_not_learn(build: Builder, name: str, task: Task) -> None:
    stage, texts = trained(build, name, task)
    state = stage.state_bytes()
    answers = stage.predict_proba(texts)
    stage.predict_proba(["brand new words here", *texts[:3]])
    stage.predict_proba(texts[::-1])
    assert stage.state_bytes() == state
    assert np.array_equal(stage.predict_proba(texts), answers)


def test_state_round_trip_gives_identical_predictions(build: Builder, name: str,
                                                      task: Task) -> None:
    stage, texts = trained(build, name, task)
    copy = build(name, task)
    copy.load_state(stage.state_bytes())
    assert np.array_equal(copy.predict_proba(texts), stage.predict_proba(texts))
    # ... and the copy goes on learning as the original does.
    more, targets = labelled(task, per_label=2, seed=5)
    stage.learn(more, targets)
    copy.learn(more, targets)
    assert np.array_equal(copy.predict_proba(texts), stage.predict_proba(texts))


def test_state_of_other_labels_is_refused(build: Builder, name: str, task: Task) -> None:
    stage, texts = trained(build, name, task)
    other = MULTICLASS if task is BINARY else BINARY
    answers = stage.predict_proba(texts)
    with pytest.raises(ModelStateError):
        stage.load_state(build(name, other).state_bytes())
    assert np.array_equal(stage.predict_proba(texts), answers)  # refusing changed nothing


def test_state_of_another_stage_is_refused(build: Builder, name: str, task: Task) -> None:
    stage, texts = trained(build, name, task)
    answers = stage.predict_proba(texts)
    others = [other for other in stage_names() if other != name]
    assert others, "the contract needs at least two registered stages to check this"
    for other in others:
        foreign, _ = trained(build, other, task)
        with pytest.raises(ModelStateError):
            stage.load_state(foreign.state_bytes())
    assert np.array_equal(stage.predict_proba(texts), answers)


@pytest.mark.parametrize("mangle", [
    lambda b: b"not state at all",
    lambda b: b[: len(b) // 2],
    lambda b: b[:10] + bytes([b[10] ^ 0xFF]) + b[11:],
], ids=["garbage", "truncated", "flipped"])
def test_corrupt_state_is_refused(build: Builder, name: str, task: Task,
                                  mangle: Callable[[bytes], bytes]) -> None:
    stage, texts = trained(build, name, task)
    answers = stage.predict_proba(texts)
    with pytest.raises(ModelStateError):
        stage.load_state(mangle(stage.state_bytes()))
    assert np.array_equal(stage.predict_proba(texts), answers)


def test_batch_answers_equal_one_by_one(build: Builder, name: str, task: Task) -> None:
    stage, texts = trained(build, name, task)
    if not stage.batch_invariant:
        pytest.skip(f"stage {name!r} does not promise batch-invariant answers")
    texts = [*texts, texts[0]]  # a repeat in the batch
    batched = stage.predict_proba(texts)
    alone = build(name, task)  # a fresh copy, so that no cache of the batch helps it
    alone.load_state(stage.state_bytes())
    one_by_one = np.vstack([alone.predict_proba([text]) for text in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_bad_targets_are_refused(build: Builder, name: str, task: Task) -> None:
    stage = build(name, task)
    with pytest.raises(ValueError):
        stage.learn(["a text"], [len(task.labels)])
    with pytest.raises(ValueError):
        stage.learn(["a text"], [-1])
    with pytest.raises(ValueError):
        stage.learn(["one", "two"], [0])


def test_every_registered_stage_has_options_here() -> None:
    missing = sorted(set(stage_names()) - set(STAGE_OPTIONS))
    assert not missing, f"add contract options for {missing} to STAGE_OPTIONS"
