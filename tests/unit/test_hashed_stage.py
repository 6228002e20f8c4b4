"""The hashed stage: learns online, fits nothing in advance, stores only the rows it wrote.

What every stage must do (shapes, state round trip, refusals, predicting without learning) is
checked for it by ``test_stage_contract.py``; these are the hashed stage's own promises.
"""

from __future__ import annotations

import numpy as np
import pytest
from cascade_streams import sentiment_stream

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.stages.registry import make_stage, register_stage, stage_names
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import LabelSet

LABELS = LabelSet(("negative", "positive"))


def trained(n: int = 400, **options: object) -> tuple[HashedTextStage, list[dict[str, object]]]:
    stage = HashedTextStage(LABELS, **options)  # type: ignore[arg-type]
    rows = sentiment_stream(n, hard_share=0.0)
    for row in rows:
        stage.learn([str(row["text"])], [LABELS.index(str(row["label"]))])
    return stage, rows


def test_fresh_stage_knows_nothing() -> None:
    stage = HashedTextStage(LABELS)
    assert np.allclose(stage.predict_proba(["a great film", "an awful film"]), 0.5)
    assert stage.n_docs == 0 and not stage.doc_freq.any() and not stage.head.weights.any()


def test_learns_a_separable_stream_online() -> None:
    stage = HashedTextStage(LABELS)
    rows = sentiment_stream(600, hard_share=0.0, seed=1)
    correct = 0
    for i, row in enumerate(rows):
        target = LABELS.index(str(row["label"]))
        if i >= 300:  # prequential: predict before learning
            correct += int(stage.predict_proba([str(row["text"])])[0].argmax() == target)
        stage.learn([str(row["text"])], [target])
    assert correct / 300 > 0.95


def test_idf_counts_only_learned_texts() -> None:
    """No vocabulary or IDF comes from events the stage has not learned from."""
    stage = HashedTextStage(LABELS, n_features=2**20)
    seen = "the plot was wonderful and the cast superb"
    unseen = "zygomorphic quokkas perambulate"
    stage.predict_proba([seen, unseen])  # predicting never learns
    assert not stage.doc_freq.any()
    stage.learn([seen], [1])
    seen_buckets = set(stage.token_buckets(seen).tolist())
    only_unseen = [b for b in stage.token_buckets(unseen).tolist() if b not in seen_buckets]
    assert only_unseen, "hash collision in the test's texts"
    assert (stage.doc_freq[only_unseen] == 0).all()
    assert (stage.doc_freq[sorted(seen_buckets)] == 1).all()
    assert stage.n_docs == 1


def test_state_holds_exactly_the_rows_learning_wrote() -> None:
    from streamcascade.models.state import unpack_state

    stage, rows = trained(60)
    written = np.unique(np.concatenate(
        [stage._hashed_counts(str(r["text"]))[0] for r in rows]))
    _, arrays = unpack_state(stage.state_bytes())
    assert np.array_equal(arrays["rows"], written)
    # A stage loaded from state publishes the same state: it knows which rows it holds.
    copy = HashedTextStage(LABELS)
    copy.load_state(stage.state_bytes())
    assert copy.state_bytes() == stage.state_bytes()


def test_state_of_another_hashing_is_refused() -> None:
    stage, _ = trained(50)
    with pytest.raises(ModelStateError, match="n_features"):
        HashedTextStage(LABELS, n_features=2**10).load_state(stage.state_bytes())
    with pytest.raises(ModelStateError, match="char_ngrams"):
        HashedTextStage(LABELS, char_ngrams=4).load_state(stage.state_bytes())


def test_state_with_rows_out_of_range_is_refused() -> None:
    from streamcascade.models.state import pack_state, unpack_state

    stage, _ = trained(20)
    meta, arrays = unpack_state(stage.state_bytes())
    arrays["rows"][-1] = stage.n_features
    with pytest.raises(ModelStateError, match="row"):
        HashedTextStage(LABELS).load_state(pack_state(meta, arrays))


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        HashedTextStage(LABELS, n_features=4)
    with pytest.raises(ConfigurationError):
        HashedTextStage(LABELS, learning_rate=0)


def test_registry_builds_and_extends() -> None:
    stage = make_stage("hashed", TASKS["isear"], n_features=2**10)
    assert stage.name == "hashed" and len(stage.labels) == 7
    assert stage.cost < 0.1  # a hashed linear model is far cheaper than BERT-base
    with pytest.raises(ConfigurationError, match="unknown stage"):
        make_stage("nope", TASKS["imdb"])
    with pytest.raises(ConfigurationError, match="bad options"):
        make_stage("hashed", TASKS["imdb"], colour="blue")
    from streamcascade.models.stages import registry

    register_stage("hashed2", lambda task, **o: HashedTextStage(task.labels, name="hashed2", **o))
    try:
        assert "hashed2" in stage_names()
        assert make_stage("hashed2", TASKS["imdb"]).name == "hashed2"
    finally:
        registry._FACTORIES.pop("hashed2")


@pytest.mark.parametrize("options", [{}, {"char_ngrams": 4}, {"bigrams": False, "idf": False}])
def test_batched_answers_equal_one_text_at_a_time(options: dict[str, object]) -> None:
    # A batch is hashed and scored at once; it must give what each text gives alone (a batch
    # with repeats, texts of one token and none, and no token pair across two texts).
    texts = ["good film", "bad plot", "good", "", "film good bad", "good film", "plot twist"]
    stage = HashedTextStage(LABELS, n_features=2**10, **options)  # type: ignore[arg-type]
    stage.learn(["good film", "bad plot", "great twist", "awful film"], [1, 0, 1, 0])
    batched = stage.predict_proba(texts)
    alone = []
    for text in texts:
        stage._features_cache.clear()
        index, values = stage._vector(text)
        alone.append(stage.head.proba_one(values, index))
    np.testing.assert_allclose(batched, np.vstack(alone), atol=1e-6)
    stage._features_cache.clear()
    together = stage._hashed_counts_many(["film good", "bad plot"])[0][0]
    stage._features_cache.clear()
    np.testing.assert_array_equal(together, stage.token_buckets("film good"))
    # The share of a text's features seen in a learned text (with IDF or without it).
    learned = set().union(*(stage.token_buckets(t).tolist() for t in
                            ["good film", "bad plot", "great twist", "awful film"]))
    np.testing.assert_allclose(stage.familiarity(texts)[:, 0],
                               [np.isin(stage.token_buckets(t), list(learned)).mean()
                                if t else 0.0 for t in texts])
