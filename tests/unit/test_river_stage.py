"""The ``river`` stage: River's own estimators, named by a spec, with a state that is not pickle.

What every stage must do is checked by ``test_stage_contract.py``; these are the river stage's own
promises: which specs it takes, how River's classes map onto the task's labels, and what its state
reader refuses.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from streamcascade.commands.worker import parse_stage_options
from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.stages.river_stage import RiverStage
from streamcascade.models.stages.river_state import decode, encode
from streamcascade.models.state import pack_state, unpack_state
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import LabelSet

FRUIT = LabelSet(("apple", "banana", "cherry"))
BINARY = LabelSet(("negative", "positive"))


def fruit_stream(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    targets = [int(t) for t in rng.integers(3, size=n)]
    texts = [f"I ate {FRUIT.names[t]} {['today', 'again', 'at noon'][i % 3]} {i}"
             for i, t in enumerate(targets)]
    return texts, targets


def trained(model: str | None = None, n: int = 90, **options: Any) -> RiverStage:
    stage = RiverStage(FRUIT, **({"model": model} if model else {}), **options)
    texts, targets = fruit_stream(n)
    for lo in range(0, n, 10):
        stage.learn(texts[lo:lo + 10], targets[lo:lo + 10])
    return stage


# -- specs ----------------------------------------------------------------------------------------


def test_the_stage_option_of_the_command_line_reaches_the_stage() -> None:
    options = parse_stage_options(
        ("river.model=feature_extraction.TFIDF|naive_bayes.ComplementNB",))
    stage = make_stage("river", TASKS["isear"], **options["river"])
    assert isinstance(stage, RiverStage)
    assert stage.spec == "feature_extraction.TFIDF | naive_bayes.ComplementNB"
    assert [type(s).__name__ for s in stage.model.steps.values()] == ["TFIDF", "ComplementNB"]


def test_a_bare_classifier_gets_text_features_in_front() -> None:
    stage = RiverStage(FRUIT, model="naive_bayes.MultinomialNB(alpha=0.5)")
    assert [type(s).__name__ for s in stage.model.steps.values()] == ["TFIDF", "MultinomialNB"]
    stage.learn(["apple pie", "banana split"], [0, 1])
    assert stage.predict_proba(["apple"]).argmax() == 0


@pytest.mark.parametrize("spec", [
    'os.system("echo hi")',                       # not River
    "datasets.Phishing",                          # a River family that reads files
    '__import__("os")',
    "tree.__class__",                             # private names
    "feature_extraction.vectorize.re.compile",    # something River merely imported
    "naive_bayes.MultinomialNB(alpha=1 + 2)",     # an expression, not a literal
    "lambda: 1",
    "naive_bayes.MultinomialNB(colour=1)",        # River refuses the argument
    "naive_bayes.MultinomialNB(",                 # does not parse
    "feature_extraction.TFIDF",                   # no classifier at the end
    "linear_model.LogisticRegression",            # two classes only, three labels
])
def test_specs_that_are_refused(spec: str) -> None:
    with pytest.raises(ConfigurationError):
        RiverStage(FRUIT, model=spec)


def test_equal_specs_spelled_differently_share_state() -> None:
    stage = trained("feature_extraction.TFIDF|naive_bayes.MultinomialNB( alpha = 0.5 )")
    copy = RiverStage(FRUIT, model="feature_extraction.TFIDF | naive_bayes.MultinomialNB(alpha=.5)")
    copy.load_state(stage.state_bytes())
    texts = fruit_stream(10, seed=3)[0]
    assert np.array_equal(copy.predict_proba(texts), stage.predict_proba(texts))
    with pytest.raises(ModelStateError, match="model"):
        RiverStage(FRUIT, model="naive_bayes.ComplementNB").load_state(stage.state_bytes())


# -- estimators and labels ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    "feature_extraction.TFIDF | naive_bayes.ComplementNB",
    "multiclass.OneVsRestClassifier(linear_model.LogisticRegression())",
    "tree.HoeffdingAdaptiveTreeClassifier(grace_period=20, seed=1)",
    "forest.ARFClassifier(n_models=2, grace_period=20, seed=1)",
    "linear_model.SoftmaxRegression",
])
def test_river_estimators_learn_and_come_back_from_state(spec: str) -> None:
    stage = trained(spec, n=120)
    texts, targets = fruit_stream(30, seed=7)
    proba = stage.predict_proba(texts)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == targets).mean() > 0.5
    copy = RiverStage(FRUIT, model=spec)
    copy.load_state(stage.state_bytes())
    # Sets of strings come back in another order, so sums over them may differ in the last bit.
    np.testing.assert_allclose(copy.predict_proba(texts), proba, rtol=0, atol=1e-12)
    more, more_targets = fruit_stream(20, seed=8)
    stage.learn(more, more_targets)
    copy.learn(more, more_targets)
    np.testing.assert_allclose(copy.predict_proba(texts), stage.predict_proba(texts), atol=1e-12)


def test_two_class_estimators_are_taught_booleans() -> None:
    stage = RiverStage(BINARY, model="linear_model.LogisticRegression")
    assert stage.binary_only
    for _ in range(20):
        stage.learn(["a lovely film", "a dreadful film"], [1, 0])
    proba = stage.predict_proba(["lovely", "dreadful"])
    assert proba.argmax(axis=1).tolist() == [1, 0]


def test_untrained_answers_are_uniform_and_unseen_classes_get_nothing() -> None:
    stage = RiverStage(FRUIT)
    np.testing.assert_array_equal(stage.predict_proba(["apple", "kiwi"]), np.full((2, 3), 1 / 3))
    for _ in range(5):
        stage.learn(["apple pie", "banana split"], [0, 1])
    proba = stage.predict_proba(["apple", "banana", "cherry"])
    assert (proba[:, 2] == 0).all()  # cherry was never taught
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert proba[0].argmax() == 0 and proba[1].argmax() == 1


def test_mini_batches_go_to_rivers_many_methods() -> None:
    stage = RiverStage(FRUIT, model="feature_extraction.TFIDF | naive_bayes.MultinomialNB",
                       mini_batch=True)
    sizes: list[int] = []
    learn_many = stage.model.learn_many
    stage.model.learn_many = lambda X, y: (sizes.append(len(X)), learn_many(X, y))
    texts, targets = fruit_stream(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' advice on River's sparse frames
        for lo in range(0, 60, 20):
            stage.learn(texts[lo:lo + 20], targets[lo:lo + 20])
        assert sizes == [20, 20, 20]
        batched = stage.predict_proba(texts[:12])
    one_by_one = np.vstack([stage.predict_proba([t]) for t in texts[:12]])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    assert (batched.argmax(axis=1) == targets[:12]).all()


def test_estimators_without_mini_batch_methods_learn_one_by_one() -> None:
    stage = RiverStage(FRUIT, model="tree.HoeffdingTreeClassifier(grace_period=10)",
                       mini_batch=True)
    assert not stage.mini_batch
    texts, targets = fruit_stream(40)
    stage.learn(texts, targets)
    assert stage.predict_proba(texts).shape == (40, 3)


# -- state ----------------------------------------------------------------------------------------


def test_a_model_holding_a_function_of_its_own_is_refused_when_written() -> None:
    stage = trained()
    stage.model.steps["TFIDF"].preprocessor = lambda text: text
    with pytest.raises(ModelStateError, match="cannot be written"):
        stage.state_bytes()


def test_shared_objects_come_back_shared() -> None:
    from river import feature_extraction, naive_bayes

    model = feature_extraction.TFIDF() | naive_bayes.MultinomialNB()
    model.learn_one("a fine day", "sun")
    step = model.steps["MultinomialNB"]
    tree, arrays = encode({"model": model, "again": step})
    copy = decode(tree, arrays)
    assert copy["again"] is copy["model"].steps["MultinomialNB"]


def _meta_and_arrays() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return unpack_state(trained().state_bytes())


@pytest.mark.parametrize("estimator", [
    {"@": "callable", "m": "os", "q": "system", "#": 0},
    {"@": "callable", "m": "river.datasets.phishing", "q": "Phishing", "#": 0},
    {"@": "callable", "m": "river.tree", "q": "_private", "#": 0},
    {"@": "builtin", "name": "eval", "#": 0},
    {"@": "river", "m": "builtins", "q": "object", "call": True, "args": None, "state": None,
     "#": 0},
    {"@": "partial", "f": {"@": "callable", "m": "subprocess", "q": "run", "#": 1},
     "args": {"@": "tuple", "v": ["ls"], "#": 2}, "kw": {"@": "dict", "k": [], "v": [], "#": 3},
     "#": 0},
    {"@": "pickle", "#": 0},
    {"@": "ref", "#": 7},
    ["a", "raw", "list"],
    {"@": "dict", "k": [1], "v": [], "#": 0},
    None,
])
def test_state_naming_anything_else_is_refused(estimator: Any) -> None:
    meta, arrays = _meta_and_arrays()
    with pytest.raises(ModelStateError):
        RiverStage(FRUIT).load_state(pack_state({**meta, "estimator": estimator}, arrays))


def test_state_holding_another_estimator_under_this_spec_is_refused() -> None:
    other = trained("naive_bayes.ComplementNB")
    meta, arrays = unpack_state(other.state_bytes())
    meta["model"] = RiverStage(FRUIT).spec
    stage = trained()
    answers = stage.predict_proba(["apple"])
    with pytest.raises(ModelStateError, match="another kind of estimator"):
        stage.load_state(pack_state(meta, arrays))
    assert np.array_equal(stage.predict_proba(["apple"]), answers)
