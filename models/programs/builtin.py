"""The built-in programs, over the shared streams and their recorded LLM answers.

Each is built fresh (new stages) by :func:`build_program` from :class:`Sources`: the stream file
whose recorded answers serve as LLM backends, whether the ONNX encoder stage is available, and an
optional live OpenAI-compatible server (a local SmolLM2, say).

- ``route``: one module, every available backend; the program a router learns.
- ``hate_gate`` (HateSpeech): a gate, then the hate decision only where the gate opens.
- ``isear_valence`` (ISEAR): joy or a negative emotion first, then which negative emotion.

Every program's featurizer is the first stage over the task's labels, and the ONNX stage stacked
on it where the encoder is available; both learn from every ground truth and are the cheap
backends of the modules (a featurizer stage a module calls costs nothing more).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamcascade.models.errors import ConfigurationError
from streamcascade.models.llm.base import LLMBackend
from streamcascade.models.programs.backends import Backend, LLMModuleBackend, StageBackend
from streamcascade.models.programs.module import Module, Modules
from streamcascade.models.programs.program import Program
from streamcascade.models.stages.base import Stage
from streamcascade.models.stages.registry import make_stage
from streamcascade.models.tasks import Task
from streamcascade.models.types import Event, LabelSet

#: The recorded LLMs of the shared streams, cheapest first.
RECORDED_LLMS = ("llama-2-70b-chat", "gpt-3.5-turbo-1106")
#: A gate opens where the stage gives the class it watches at least this probability: a gate
#: should rather open too often (the next module decides) than miss.
GATE_THRESHOLD = 0.2


@dataclass
class Sources:
    """Where backends come from: ``dataset`` (its recorded answers of ``recorded``), the ONNX
    stage (``onnx``), a live server (``live``), and options per stage name."""

    dataset: Path | None = None
    recorded: tuple[str, ...] = RECORDED_LLMS
    onnx: bool = True
    live: LLMBackend | None = None
    stage_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def recorded_llms(self, task: Task) -> list[LLMBackend]:
        if self.dataset is None:
            return []
        from streamcascade.models.llm.recorded import RecordedLLM

        found: list[LLMBackend] = []
        for name in self.recorded:
            try:
                found.append(RecordedLLM(self.dataset, name, task))
            except ConfigurationError:  # the file holds no answers of this LLM
                continue
        return found

    def llms(self, task: Task) -> list[LLMBackend]:
        """Every LLM available to ``task``, cheapest first."""
        found = self.recorded_llms(task) + ([self.live] if self.live is not None else [])
        return sorted(found, key=lambda llm: llm.cost)


@dataclass
class _Featurizer:
    """The task's stages: the first, and the ONNX stage stacked on it where available."""

    stages: list[Stage]
    backends: list[StageBackend]


def _featurizer(task: Task, sources: Sources) -> _Featurizer:
    first = make_stage("hashed", task, **sources.stage_options.get("hashed", {}))
    backends = [StageBackend(first)]
    stages = [first]
    if sources.onnx:
        encoder = make_stage("onnx", task, **{"stack": True,
                                              **sources.stage_options.get("onnx", {})})
        backends.append(StageBackend(encoder, upstream=backends[0]))
        stages.append(encoder)
    return _Featurizer(stages, backends)


def _identity(labels: LabelSet) -> dict[str, str | None]:
    return {name: name for name in labels.names}


# -- route ------------------------------------------------------------------------------------


async def _route(event: Event, m: Modules) -> str:
    return await m.answer(event.text)


def route(task: Task, sources: Sources) -> Program:
    features = _featurizer(task, sources)
    backends: list[Backend] = [*features.backends]
    backends += [LLMModuleBackend(llm) for llm in sources.llms(task)]
    answer = Module("answer", task.labels, backends, teach=_identity(task.labels),
                    description="the task's own question")
    return Program("route", task, [answer], _route, features.stages,
                   description="one module answering the task, every available backend")


# -- hate_gate --------------------------------------------------------------------------------


def _opens_at(watched: str, threshold: float, open_label: str,
              closed_label: str) -> Callable[[np.ndarray, LabelSet], str]:
    def decide(proba: np.ndarray, labels: LabelSet) -> str:
        return open_label if proba[labels.index(watched)] >= threshold else closed_label
    return decide


async def _hate_gate(event: Event, m: Modules) -> str:
    if await m.gate(event.text) == "clean":
        return "noHate"
    return await m.hate(event.text)


def hate_gate(task: Task, sources: Sources) -> Program:
    _require(task, "hatespeech", "hate_gate")
    features = _featurizer(task, sources)
    llms = sources.llms(task)
    opens = _opens_at("hate", GATE_THRESHOLD, "suspect", "clean")
    gate_backends: list[Backend] = [
        StageBackend(b.stage, upstream=b.upstream, decide=opens) for b in features.backends]
    # The gate asks an LLM the task's question and reads "hate" as "suspect": an LLM the gate
    # asked is paid once if the hate module asks it again.
    gate_backends += [LLMModuleBackend(llm, project={"hate": "suspect", "noHate": "clean"})
                      for llm in llms[:1]]
    gate = Module("gate", ["clean", "suspect"], gate_backends,
                  teach={"hate": "suspect", "noHate": "clean"},
                  description="could the sentence be hate speech (recall first)")
    hate_backends: list[Backend] = [features.backends[-1]]
    hate_backends += [LLMModuleBackend(llm) for llm in llms]
    hate = Module("hate", task.labels, hate_backends, teach=_identity(task.labels),
                  description="is it hate speech, where the gate opened")
    return Program("hate_gate", task, [gate, hate], _hate_gate, features.stages,
                   description="a gate, then the hate decision where the gate opens")


# -- isear_valence ----------------------------------------------------------------------------

_JOY = "joy"


def _valence_of(label: str) -> str:
    return _JOY if label == _JOY else "negative"


def _negative_of(label: str) -> str | None:
    return None if label == _JOY else label


def _best_negative(proba: np.ndarray, labels: LabelSet) -> str:
    masked = np.array(proba, dtype=np.float64)
    masked[labels.index(_JOY)] = -1.0
    return labels.name(int(np.argmax(masked)))


def _joy_or_not(proba: np.ndarray, labels: LabelSet) -> str:
    return _JOY if proba[labels.index(_JOY)] >= 0.5 else "negative"


async def _isear_valence(event: Event, m: Modules) -> str:
    if await m.valence(event.text) == _JOY:
        return _JOY
    return await m.emotion(event.text)


def isear_valence(task: Task, sources: Sources) -> Program:
    _require(task, "isear", "isear_valence")
    features = _featurizer(task, sources)
    llms = sources.llms(task)
    valence = Module(
        "valence", [_JOY, "negative"],
        [*(StageBackend(b.stage, upstream=b.upstream, decide=_joy_or_not)
           for b in features.backends),
         *(LLMModuleBackend(llm, project=_valence_of) for llm in llms)],
        teach=_valence_of, description="joy, or one of the negative emotions")
    negatives = [n for n in task.labels.names if n != _JOY]
    # An LLM's recorded answer is to the seven-way question: where it says joy, it gives this
    # module no answer (and the event an error), as a live LLM asked the six-way question would
    # not have to.
    emotion = Module(
        "emotion", negatives,
        [*(StageBackend(b.stage, upstream=b.upstream, decide=_best_negative)
           for b in features.backends[-1:]),
         *(LLMModuleBackend(llm, project=_negative_of) for llm in llms)],
        teach=_negative_of, description="which negative emotion")
    return Program("isear_valence", task, [valence, emotion], _isear_valence, features.stages,
                   description="valence first, then the negative emotion")


def _require(task: Task, name: str, program: str) -> None:
    if task.name != name:
        raise ConfigurationError(f"program {program!r} is written for the {name} stream, "
                                 f"not {task.name}")


# -- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinProgram:
    """A built-in program: how to build it, for which tasks, and why it is a fair test."""

    name: str
    build: Callable[[Task, Sources], Program]
    tasks: tuple[str, ...] | None  # None: any task
    summary: str
    fair_test: str


PROGRAMS: Mapping[str, BuiltinProgram] = {p.name: p for p in (
    BuiltinProgram(
        "route", route, None,
        "one module answering the task; backends: the first stage, the ONNX stage, every "
        "recorded LLM of the stream and a live server if given",
        "one call site sees every event and every backend, as every baseline does; the policy "
        "reads only the first stages' probabilities, learns only from the final answer's "
        "ground truth, and pays for its own features"),
    BuiltinProgram(
        "hate_gate", hate_gate, ("hatespeech",),
        "a gate (the stages at a low threshold, or the cheaper LLM) says clean or suspect; "
        "the hate module (the ONNX stage or an LLM) decides only where it opens",
        "the gate is never told its own labels: a gate that lets hate through loses F1 at "
        "the final answer, which is all the policy sees; the second site sees only the events "
        "the first passed, so its policy learns on a distribution the first shapes; an LLM "
        "asked at both sites is paid once"),
    BuiltinProgram(
        "isear_valence", isear_valence, ("isear",),
        "valence (joy or negative) from the stages or an LLM; where negative, the emotion "
        "module names one of the six negative emotions",
        "a valence mistake cannot be undone (the emotion module cannot say joy), so the first "
        "choice matters and is judged only through the final answer; an LLM's recorded "
        "seven-way answer is projected onto each module, and one that says joy where a "
        "negative emotion is asked gives no answer, an error the policy learns to avoid"),
)}


def program_names() -> list[str]:
    return sorted(PROGRAMS)


def build_program(name: str, task: Task, sources: Sources) -> Program:
    """A fresh built-in program ``name`` for ``task``."""
    found = PROGRAMS.get(name)
    if found is None:
        raise ConfigurationError(f"unknown program {name!r}; built-in: {program_names()}")
    if found.tasks is not None and task.name not in found.tasks:
        raise ConfigurationError(f"program {name!r} is written for {list(found.tasks)}, "
                                 f"not {task.name}")
    return found.build(task, sources)
