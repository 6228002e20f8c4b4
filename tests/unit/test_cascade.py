"""The cascade: routing, warm-up, audits, operating points, and its state as bytes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cascade_streams import sentiment_stream, write_stream

from streamcascade.errors import ConfigurationError, ModelStateError
from streamcascade.models.baseline import build_baseline
from streamcascade.models.cascade import Cascade, CascadeConfig, build_cascade
from streamcascade.models.datasets import StreamRow, read_stream
from streamcascade.models.llm.recorded import RecordedLLM
from streamcascade.models.protocol import BatchAnswer, StreamModel
from streamcascade.models.replay import replay
from streamcascade.models.stages.hashed_text import HashedTextStage
from streamcascade.models.state import pack_state, unpack_state
from streamcascade.models.tasks import TASKS
from streamcascade.models.types import SOURCE_AUDIT, SOURCE_LLM, Decision, Demonstration, Event

TASK = TASKS["imdb"]


@pytest.fixture
def stream(tmp_path: Path) -> tuple[RecordedLLM, list[StreamRow]]:
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(1200, hard_share=0.2, seed=5))
    return RecordedLLM(path, "oracle", TASK), read_stream(path)


def events(rows: list[StreamRow]) -> list[Event]:
    return [Event(r.id, r.text) for r in rows]


def test_warm_up_sends_everything_to_the_llm(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig(warmup=50))
    for row in rows[:50]:
        answered = asyncio.run(cascade.answer(events([row])))
        (decision,) = answered.decisions
        assert decision.stage == "oracle" and decision.path == ["hashed", "oracle"]
        assert decision.cost == pytest.approx(cascade.stages[0].cost + 1182.0)
        assert decision.label == row.label
        demos = answered.demonstrations
        assert [(d.event.id, d.source) for d in demos] == [(row.id, SOURCE_LLM)]
        cascade.learn(demos)
    assert not cascade.learner.warming_up
    assert cascade.version == 50


def test_a_cascade_is_a_stream_model(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    """The seam a driver serves: typed (mypy checks this assignment) and checked at run time."""
    llm, rows = stream
    model: StreamModel = build_cascade(TASK, llm, CascadeConfig())
    assert isinstance(model, StreamModel) and not isinstance(llm, StreamModel)
    assert model.stage_names == ["hashed", "oracle"]
    assert asyncio.run(model.answer([])) == BatchAnswer([], [])
    # Warming up: every event goes to the LLM, and each answer comes back as a demonstration,
    # with the batch that produced it and with no other.
    for batch in (rows[:3], rows[3:5]):
        answered = asyncio.run(model.answer(events(batch)))
        assert [d.event_id for d in answered.decisions] == [r.id for r in batch]
        assert [(d.event.id, d.label, d.source) for d in answered.demonstrations] == [
            (r.id, TASK.labels.index(str(r.label)), SOURCE_LLM) for r in batch]


def test_learns_to_answer_early_and_audits(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig(audit_rate=0.2))
    result = replay(rows, TASK, cascade, progress=False)
    assert result["llm_fraction"] < 0.6
    assert result["quality"] > 0.85
    assert 0 < result["audit_fraction"] < 0.2
    answered = asyncio.run(cascade.answer(events(rows[:200])))
    audited = [d for d in answered.decisions if d.path[-1] == "oracle:audit"]
    # The audit's LLM answer is the event's answer: the call was made anyway.
    assert audited and all(d.stage == "oracle" for d in audited)
    assert all(d.label_index == llm.answer_now(d.event_id).label for d in audited)
    sources = {d.event.id: d.source for d in answered.demonstrations}
    assert all(sources[d.event_id] == SOURCE_AUDIT for d in audited)


class CountingLLM(RecordedLLM):
    """Recorded answers; counts the batches it is asked."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "oracle", TASK)
        self.batches = 0

    async def answer(self, batch):  # type: ignore[no-untyped-def]
        self.batches += 1
        return await super().answer(batch)


def test_early_answers_are_handed_over_before_the_llm_is_asked(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(900, hard_share=0.2, seed=4))
    llm, rows = CountingLLM(path), read_stream(path)
    cascade = build_cascade(TASK, llm, CascadeConfig(audit_rate=0.3))
    replay(rows[:700], TASK, cascade, progress=False)
    handed: list[Decision] = []
    asked_before: list[int] = []

    def on_early(decisions: list[Decision]) -> None:
        handed.extend(decisions)
        asked_before.append(llm.batches)

    asked = llm.batches
    answered = asyncio.run(cascade.answer(events(rows[700:]), on_early=on_early))
    assert asked_before == [asked] and llm.batches == asked + 1
    # Exactly the early answers the LLM does not touch (neither deferred nor audited), as the
    # very decisions returned.
    untouched = [d for d in answered.decisions if not d.path[-1].startswith("oracle")]
    assert untouched and len(untouched) < len(answered.decisions)
    assert [id(d) for d in handed] == [id(d) for d in untouched]
    assert {d.event.id for d in answered.demonstrations} == {
        d.event_id for d in answered.decisions if d.path[-1].startswith("oracle")}


def test_the_records_kept_for_learning_are_the_latest(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig(record_cache=10))
    for lo in (0, 15):
        asyncio.run(cascade.answer(events(rows[lo:lo + 15])))
    assert sorted(cascade._records.keys()) == sorted(r.id for r in rows[20:30])


def test_decisions_name_the_answering_stage(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig())
    replay(rows[:600], TASK, cascade, progress=False)
    for d in asyncio.run(cascade.answer(events(rows[600:700]))).decisions:
        assert d.label in TASK.labels.names and d.label_index == TASK.labels.index(d.label)
        assert d.model_version == cascade.version
        if d.stage == "hashed":
            assert d.stage_index == 0 and 0.5 <= d.confidence <= 1.0
        else:
            assert d.stage_index == 1 and d.path[-1] in ("oracle", "oracle:audit")


def test_state_round_trips_with_identical_decisions(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    config = CascadeConfig(seed=3)
    first = build_cascade(TASK, llm, config)
    replay(rows[:700], TASK, first, progress=False)
    second = build_cascade(TASK, llm, CascadeConfig(seed=99))
    second.load_state(first.state_bytes())
    assert second.version == first.version
    later = events(rows[700:900])
    a = asyncio.run(first.answer(later)).decisions
    b = asyncio.run(second.answer(later)).decisions
    assert [(d.label, d.stage, d.path, d.confidence) for d in a] == [
        (d.label, d.stage, d.path, d.confidence) for d in b]
    assert np.array_equal(first.controller.thresholds, second.controller.thresholds)


def test_a_state_from_before_the_referee_bins_loads(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    """States already on a state topic, written before the referee kept confidence bins, still
    load: the bins start empty."""
    llm, rows = stream
    first = build_cascade(TASK, llm, CascadeConfig())
    replay(rows[:300], TASK, first, progress=False, feedback="both")
    meta, arrays = unpack_state(first.state_bytes())
    assert first.referees[0].judged_bins.sum() > 0
    old = {k: v for k, v in arrays.items() if not k.endswith("_bins")}
    assert len(old) == len(arrays) - 2
    second = build_cascade(TASK, llm, CascadeConfig())
    second.load_state(pack_state(meta, old))
    assert second.version == first.version
    assert np.array_equal(second.referees[0].judged, first.referees[0].judged)
    assert second.referees[0].judged_bins.sum() == 0


def test_corrupt_or_foreign_state_is_refused(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig())
    replay(rows[:150], TASK, cascade, progress=False)
    data = cascade.state_bytes()
    fresh = build_cascade(TASK, llm, CascadeConfig())
    for bad in (b"", data[:-5], b"garbage" + data, bytes(len(data))):
        with pytest.raises(ModelStateError):
            fresh.load_state(bad)


def test_state_of_another_task_is_refused(tmp_path: Path,
                                          stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, _ = stream
    imdb = build_cascade(TASK, llm, CascadeConfig())
    path = write_stream(tmp_path / "hatespeech.jsonl", [
        {"id": 0, "text": "x", "label": "hate", "llm": {"oracle": "yes"}}])
    hate_llm = RecordedLLM(path, "oracle", TASKS["hatespeech"])
    hate = build_cascade(TASKS["hatespeech"], hate_llm, CascadeConfig())
    with pytest.raises(ModelStateError, match="task"):
        hate.load_state(imdb.state_bytes())


def test_target_llm_share_is_tracked(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig(target_llm_share=0.5, warmup=50))
    result = replay(rows + rows[:0], TASK, cascade, progress=False)
    assert abs(result["llm_call_fraction"] - 0.5) < 0.1


def test_mu_sets_a_fixed_threshold(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, _ = stream
    cascade = build_cascade(TASK, llm, CascadeConfig(mu=1e-4))
    assert cascade.controller.thresholds.tolist() == [pytest.approx(0.1182)]
    assert build_cascade(TASK, llm, CascadeConfig(mu=1.0)).controller.thresholds.tolist() == [1.0]


def test_config_is_validated(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, _ = stream
    with pytest.raises(ConfigurationError, match="one operating point"):
        build_cascade(TASK, llm, CascadeConfig(mu=0.1, target_llm_share=0.3))
    with pytest.raises(ConfigurationError):
        build_cascade(TASK, llm, CascadeConfig(target_llm_share=1.5))
    with pytest.raises(ConfigurationError, match="not in the cascade"):
        build_cascade(TASK, llm, CascadeConfig(), onnx={"model": "x"})
    assert CascadeConfig().operating_point() == ("quality_loss", 0.02)
    config = CascadeConfig(target_llm_share=0.3)
    assert CascadeConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigurationError, match="unknown"):
        CascadeConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigurationError, match="record_cache"):
        build_cascade(TASK, llm, CascadeConfig(record_cache=-1))


def test_bad_demonstration_is_refused(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, _ = stream
    cascade = build_cascade(TASK, llm, CascadeConfig())
    with pytest.raises(ValueError):
        cascade.learn([Demonstration(Event("x", "text"), 5)])


def test_learning_without_an_answer_record(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    """Feedback for an event this worker never answered (another worker did) still teaches."""
    llm, rows = stream
    cascade = build_cascade(TASK, llm, CascadeConfig())
    cascade.learn([Demonstration(Event(r.id, r.text), TASK.labels.index(str(r.label)),
                                 "ground_truth") for r in rows[:100]])
    assert cascade.learner.n_learned == 100 and cascade.version == 1
    stage = cascade.stages[0]
    assert isinstance(stage, HashedTextStage) and stage.n_learned == 100


def test_baseline_answers_by_confidence(stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    never = build_baseline(TASK, llm, CascadeConfig(), threshold=1.01)
    always = build_baseline(TASK, llm, CascadeConfig(warmup=0), threshold=0.0)
    assert replay(rows[:300], TASK, never, progress=False)["llm_fraction"] == 1.0
    result = replay(rows[:300], TASK, always, progress=False)
    assert result["llm_fraction"] == 0.0 and result["audit_fraction"] == 0.0


def test_a_bad_part_leaves_the_state_untouched(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    from streamcascade.models.state import pack_state, unpack_state

    llm, rows = stream
    donor = build_cascade(TASK, llm, CascadeConfig(seed=1))
    replay(rows[:300], TASK, donor, progress=False)
    meta, arrays = unpack_state(donor.state_bytes())
    del arrays["policy0_mean_weights"]  # the stage part is fine, a later part is missing
    target = build_cascade(TASK, llm, CascadeConfig(seed=2))
    replay(rows[300:500], TASK, target, progress=False)
    before = target.state_bytes()
    with pytest.raises(ModelStateError, match="malformed"):
        target.load_state(pack_state(meta, arrays))
    assert target.state_bytes() == before


class UpstreamSpy(HashedTextStage):
    """A second stage that records the upstream probabilities it is handed."""

    def __init__(self) -> None:
        super().__init__(TASK.labels, name="spy", n_features=2**12)
        self.seen: dict[str, dict[str, np.ndarray]] = {"predict": {}, "learn": {}}

    def predict_proba(self, texts, upstream=None):  # type: ignore[no-untyped-def]
        assert upstream is not None and upstream.shape == (len(texts), 2)
        self.seen["predict"].update(zip(texts, upstream, strict=True))
        return super().predict_proba(texts)

    def learn(self, texts, targets, upstream=None):  # type: ignore[no-untyped-def]
        assert upstream is not None and upstream.shape == (len(texts), 2)
        self.seen["learn"].update(zip(texts, upstream, strict=True))
        super().learn(texts, targets)


def test_later_stages_get_the_upstream_answers_as_given(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    first, spy = HashedTextStage(TASK.labels), UpstreamSpy()
    cascade = Cascade(TASK, [first, spy], llm, CascadeConfig(stages=["hashed", "spy"], warmup=20))
    replay(rows[:300], TASK, cascade, progress=False)
    batch = rows[300:340]
    before = first.predict_proba([r.text for r in batch])
    asyncio.run(cascade.answer(events(batch)))
    reached = [i for i, r in enumerate(batch) if r.text in spy.seen["predict"]]
    assert reached  # some events were deferred past the first stage
    for i in reached:
        np.testing.assert_allclose(spy.seen["predict"][batch[i].text], before[i])
    # Learning: the spy is handed the first stage's answers from before this learning step,
    # for the events that never reached it too (recomputed for those).
    cascade.learn([Demonstration(Event(r.id, r.text), TASK.labels.index(str(r.label)),
                                 SOURCE_LLM) for r in batch])
    assert not np.allclose(first.predict_proba([r.text for r in batch]), before)
    for i, row in enumerate(batch):
        np.testing.assert_allclose(spy.seen["learn"][row.text], before[i])


def test_an_event_teaches_the_policy_once_when_its_labels_meet(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    """The LLM's answer and the ground truth of one event in one learning step: one lesson."""
    llm, rows = stream
    together, apart = (build_cascade(TASK, llm, CascadeConfig()) for _ in range(2))
    for cascade, steps in ((together, 1), (apart, 2)):
        # Warming up: all deferred to the LLM.
        from_llm = asyncio.run(cascade.answer(events(rows[:20]))).demonstrations
        truth = [Demonstration(Event(r.id, r.text), TASK.labels.index(str(r.label)),
                               "ground_truth") for r in rows[:20]]
        for part in ([from_llm + truth] if steps == 1 else [from_llm, truth]):
            cascade.learn(part)
        assert cascade.policies[0].n_updates == 20
    assert np.array_equal(together.policies[0].arrays()["mean_weights"],
                          apart.policies[0].arrays()["mean_weights"])


class FailingAudits(RecordedLLM):
    """Recorded answers until told to fail: then every answer is a timeout."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "oracle", TASK)
        self.fail = False

    async def answer(self, batch):  # type: ignore[no-untyped-def]
        answers = await super().answer(batch)
        if not self.fail:
            return answers
        return [replace(a, label=None, error="timed out") for a in answers]


def test_an_audit_the_llm_failed_is_the_stages_answer(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "imdb.jsonl", sentiment_stream(900, hard_share=0.1, seed=6))
    llm = FailingAudits(path)
    rows = read_stream(path)
    cascade = build_cascade(TASK, llm, CascadeConfig(audit_rate=0.3))
    replay(rows[:700], TASK, cascade, progress=False)
    llm.fail = True
    decisions = asyncio.run(cascade.answer(events(rows[700:]))).decisions
    audited = [d for d in decisions if d.path[-1] == "oracle:audit"]
    assert audited
    for d in audited:  # the stage's answer stands, and says so
        assert d.stage == "hashed" and d.stage_index == 0 and d.label_index is not None


def test_a_restart_serves_the_configured_operating_point(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    """A worker restarted with another operating point loads the learned state, not the old
    point's thresholds."""
    llm, rows = stream
    old = build_cascade(TASK, llm, CascadeConfig(mu=1e-4))
    replay(rows[:400], TASK, old, progress=False)
    data = old.state_bytes()
    for config in (CascadeConfig(mu=1e-2), CascadeConfig(max_quality_loss=0.01)):
        new = build_cascade(TASK, llm, config)
        new.load_state(data)
        fresh_solve = new.controller._solve()
        expected = [1.0] if config.mu else fresh_solve.tolist()
        assert new.controller.thresholds.tolist() == pytest.approx(expected)
        assert new.controller.thresholds.tolist() != pytest.approx(
            old.controller.thresholds.tolist())


def test_a_controller_window_out_of_range_is_refused(
        stream: tuple[RecordedLLM, list[StreamRow]]) -> None:
    llm, rows = stream
    donor = build_cascade(TASK, llm, CascadeConfig())
    replay(rows[:200], TASK, donor, progress=False)
    meta, arrays = unpack_state(donor.state_bytes())
    meta["controller"]["cursor"] = 5000
    target = build_cascade(TASK, llm, CascadeConfig())
    with pytest.raises(ModelStateError, match="window position"):
        target.load_state(pack_state(meta, arrays))
    asyncio.run(target.answer(events(rows[200:210])))  # still serves
