"""A compiled program: a :class:`~streamcascade.models.protocol.StreamModel` the replay and the
Kafka operator serve as they serve a cascade.

Answering a batch: the featurizer reads every event's text once (batched); then every event runs
the program as a task of its own, and each module call asks the call site's policy for a backend
(:mod:`.policy`), runs it (calls of the batch that reach the same backend together share one
batch), and charges the event. An event whose program raises, whose module answers outside its
labels, or whose backend fails is a decision with an error and no label, never a failed batch.

Learning: ground-truth demonstrations only (the program's answer is scored against them; LLM
answers are not ground truth here). Each teaches the featurizer, the learnable backends of every
module the event called (through the module's ``teach``), and, where the event's run is held,
every call site's policy (the return of each call). A run is held by the worker that answered
the event; in a fleet it travels to the learner with the event's ground truth
(:meth:`CompiledProgram.run_record`, :meth:`CompiledProgram.adopt_run`).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamcascade.models.costs import BERT_BASE_PARAMETERS
from streamcascade.models.errors import ConfigurationError
from streamcascade.models.lru import LRUCache
from streamcascade.models.programs.backends import Backend, StageBackend
from streamcascade.models.programs.module import PARENT_SITE, Module, Modules
from streamcascade.models.programs.policy import CostController, SitePolicy, Utility, softmax
from streamcascade.models.programs.program import Program, ProgramConfig
from streamcascade.models.programs.trace import CURRENT, Call, ModuleCallFailed, Trace
from streamcascade.models.protocol import BatchAnswer
from streamcascade.models.stages.base import Stage
from streamcascade.models.state import load_all_or_nothing, pack_state
from streamcascade.models.types import SOURCE_GROUND_TRUTH, Decision, Demonstration, Event

#: The name of the place an answer comes from when the program answers without any module.
PROGRAM_STAGE = "program"
#: The most runs of one event the hindsight oracle enumerates.
MAX_ORACLE_RUNS = 512
#: The price of cost before a budget has moved it, when no fixed weight is given.
DEFAULT_COST_WEIGHT = 0.1
#: Extra features every call site reads beside the featurizer's probabilities: the largest
#: probability, the entropy, the text's length, a constant, and how many times the site was
#: called before in this event.
_EXTRA_FEATURES = 5


@runtime_checkable
class SharesRuns(Protocol):
    """A model whose learning needs, beside an event's ground truth, the run that answered it
    (its draws): the answering worker hands it over with the ground truth, and whichever worker
    learns takes it, so a policy learns from every worker's answers."""

    def run_record(self, event_id: str) -> dict[str, Any] | None: ...

    def adopt_run(self, event: Event, record: dict[str, Any]) -> bool: ...


class CompiledProgram:
    """``program`` run under ``config``: answers batches, learns from ground truth, and hands
    over its learned state (stages, policies, the price of cost) as data-only bytes."""

    def __init__(self, program: Program, config: ProgramConfig | None = None) -> None:
        self.config = config = config or ProgramConfig()
        config.validate()
        program.validate()
        self.program = program
        self.task = program.task
        self.version = 0
        self.modules = Modules(program.modules)
        self.featurizer = list(program.featurizer)
        self._apply_costs(config.backend_costs)
        self._stages = self._learnable_stages()
        backends = [b for m in program.modules for b in m.backends]
        self.reference_cost = max([b.cost for b in backends] + [1e-9])
        self.feature_cost = sum(s.cost for s in self.featurizer)
        self._marginal = {id(b): self._marginal_cost(b) for b in backends}
        self.cheapest_cost = self.feature_cost + min(self._marginal.values())
        if config.budget is not None and config.budget < self.cheapest_cost:
            raise ConfigurationError(
                f"a budget of {config.budget:g} per event is below the cheapest way to answer "
                f"an event: {self.cheapest_cost:.4g} (the policy's features, "
                f"{self.feature_cost:.4g}, and the cheapest backend)")
        start = config.cost_weight if config.cost_weight is not None else DEFAULT_COST_WEIGHT
        if config.chooser == "random" and config.cost_weight is None:
            start = 0.0  # (a uniform draw, until the budget says otherwise)
        steered = config.chooser in ("learned", "random")
        self.controller = CostController(
            config.budget if steered else None, self.reference_cost, config.budget_rate, start,
            floor=_price_floor(config))
        positive = (self.task.labels.index(self.task.positive_label)
                    if self.task.metric == "f1" and self.task.positive_label else None)
        self.utility = Utility(self.task.metric, positive)
        self.n_features = len(self.task.labels) + _EXTRA_FEATURES
        self.policies: dict[str, SitePolicy] = {}
        self._site_module: dict[str, str] = {}
        self._traces: LRUCache[str, Trace] = LRUCache(config.trace_cache)
        self._rng = np.random.default_rng(config.seed)
        #: Ground truths learned; those whose run this worker held (they train the policies).
        self.n_learned = 0
        self.n_rewarded = 0
        #: Calls per ``module=backend`` answered by this worker (a report, not learned state).
        self.backend_calls: Counter[str] = Counter()

    # -- set-up -----------------------------------------------------------------------------------

    def _apply_costs(self, costs: dict[str, float]) -> None:
        known = {b.name for m in self.program.modules for b in m.backends}
        known |= {s.name for s in self.featurizer}
        unknown = set(costs) - known
        if unknown:
            raise ConfigurationError(f"prices given for unknown backends {sorted(unknown)}; "
                                     f"the program's are {sorted(known)}")
        for module in self.program.modules:
            for backend in module.backends:
                if backend.name in costs:
                    backend.cost = float(costs[backend.name])
        for stage in self.featurizer:
            if stage.name in costs:
                stage.cost = float(costs[stage.name])

    def _learnable_stages(self) -> list[Stage]:
        """Every stage the program learns, once each, in a fixed order (the state's)."""
        found: dict[int, Stage] = {}
        for stage in self.featurizer:
            found.setdefault(id(stage), stage)
        for module in self.program.modules:
            for backend in module.backends:
                for stage in backend.stages():
                    found.setdefault(id(stage), stage)
        return list(found.values())

    def _marginal_cost(self, backend: Backend) -> float:
        """What a call adds to an event the featurizer has read: a stage the featurizer runs
        anyway adds nothing."""
        if isinstance(backend, StageBackend):
            paid = {id(s) for s in self.featurizer}
            return sum(s.cost for s in backend.stages() if id(s) not in paid)
        return float(backend.cost)

    @property
    def stage_names(self) -> list[str]:
        """Every place an answer can come from, cheapest first: the program itself (an answer
        without any module call), then every backend."""
        ranked = sorted({(self._marginal[id(b)], b.name) for m in self.program.modules
                         for b in m.backends})
        names = [PROGRAM_STAGE]
        for _, name in ranked:
            if name not in names:
                names.append(name)
        return names

    @property
    def warming_up(self) -> bool:
        """Whether the policies still wait for the stages: until ``warmup`` ground truths have
        been learned, the choices are those of untrained policies (a draw that favours cheap
        backends just enough to keep the budget) and only the baselines learn, so that the
        policies do not learn how bad the stages are before the stages have learned anything."""
        return self.config.chooser == "learned" and self.n_rewarded < self.config.warmup

    # -- answering --------------------------------------------------------------------------------

    async def answer(self, events: Sequence[Event],
                     on_early: Callable[[list[Decision]], None] | None = None) -> BatchAnswer:
        """Answer ``events``; a program's answers are not known before it ends, so ``on_early``
        is not called. No demonstrations: programs learn from ground truth."""
        if not events:
            return BatchAnswer([])
        version = self.version
        traces = self.start(events)
        outcomes = await asyncio.gather(*(self._run(t) for t in traces))
        decisions = []
        for trace, error in zip(traces, outcomes, strict=True):
            decisions.append(self._decision(trace, error, version))
            self.controller.observe(trace.cost)
            # A failed run is kept too: its choices earned the failure (no answer is wrong).
            self._traces.put(trace.event.id, trace)
            for call in trace.calls:
                self.backend_calls[f"{call.module}={call.backend}"] += 1
        return BatchAnswer(decisions)

    def start(self, events: Sequence[Event], forced: list[int] | None = None,
              memos: Sequence[dict[Any, Any]] | None = None) -> list[Trace]:
        """A run for each event, with the featurizer's reading of its text (batched) paid."""
        texts = [e.text for e in events]
        probas: list[np.ndarray] = []
        upstream: np.ndarray | None = None
        for stage in self.featurizer:
            upstream = stage.predict_proba(texts, upstream)
            probas.append(upstream)
        assert upstream is not None
        traces = []
        for i, event in enumerate(events):
            trace = Trace(event, self, self._event_features(upstream[i], event.text),
                          forced=None if forced is None else list(forced),
                          memo=memos[i] if memos is not None else {})
            for stage, proba in zip(self.featurizer, probas, strict=True):
                trace.memo[("proba", id(stage), event.text)] = proba[i]
                trace.charge(("stage", id(stage), event.text), stage.cost)
            traces.append(trace)
        return traces

    @staticmethod
    def _event_features(proba: np.ndarray, text: str) -> np.ndarray:
        p = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)
        entropy = float(-(p * np.log(p)).sum() / math.log(len(p)))
        return np.concatenate([p, [p.max(), entropy, math.log1p(len(text)) / 10.0, 1.0]])

    async def _run(self, trace: Trace) -> str | None:
        """Run the program on ``trace``'s event; the error that ended it, or None."""
        token = CURRENT.set(trace)
        try:
            out = await self.program.run(trace.event, self.modules)
        except ModuleCallFailed as exc:
            return str(exc)
        except Exception as exc:  # a user's program: whatever it raises is this event's error
            return f"the program raised {type(exc).__name__}: {exc}"
        finally:
            CURRENT.reset(token)
        if not isinstance(out, str) or out not in self.task.labels.names:
            return (f"the program returned {out!r}, not one of the task's labels "
                    f"{list(self.task.labels.names)}")
        trace.final = self.task.labels.index(out)
        return None

    async def call_module(self, trace: Trace, module: Module, value: Any, site: str) -> str:
        """One module call of ``trace``'s run (a :class:`~.trace.Runner`)."""
        if self.modules.get(module.name) is not module:
            raise ModuleCallFailed(f"module {module.name!r} is not one of this program's")
        occurrence = trace.occurrences[site]
        trace.occurrences[site] += 1
        x = np.append(trace.features, min(occurrence, 3) / 3.0)
        arm, behaviour = self._choose(trace, site, module, x, occurrence)
        backend = module.backends[arm]
        before = trace.cost
        token = PARENT_SITE.set(site)
        call = Call(site, module.name, arm, backend.name, x, behaviour, before, value)
        try:
            label, confidence = await backend.call(trace, value)
            if label not in module.labels.names:
                raise ModuleCallFailed(f"backend {backend.name!r} of module {module.name!r} "
                                       f"answered {label!r}, not one of "
                                       f"{list(module.labels.names)}")
        except ModuleCallFailed:
            raise
        except Exception as exc:  # a backend's failure is its event's error
            raise ModuleCallFailed(f"backend {backend.name!r} of module {module.name!r} "
                                   f"failed: {type(exc).__name__}: {exc}") from exc
        finally:
            PARENT_SITE.reset(token)
            # Recorded failed or not: a choice that ended in a failure is credited with it.
            call.charged = trace.cost - before
            trace.calls.append(call)
        call.label, call.confidence = label, confidence
        return label

    def _arm_costs(self, module: Module) -> np.ndarray:
        return np.array([self._marginal[id(b)] for b in module.backends]) / self.reference_cost

    def _policy(self, site: str, module: Module) -> SitePolicy:
        policy = self.policies.get(site)
        if policy is None:
            policy = self.policies[site] = SitePolicy(self._arm_costs(module), self.n_features)
            self._site_module[site] = module.name
        return policy

    def _choose(self, trace: Trace, site: str, module: Module, x: np.ndarray,
                occurrence: int) -> tuple[int, np.ndarray]:
        """The backend of one call, and the probabilities the backends had (one-hot when the
        choice was not drawn)."""
        n = len(module.backends)
        if trace.forced is not None:  # the oracle's enumeration
            position = trace.choices
            trace.choices += 1
            if position < len(trace.forced):
                return _sure(min(trace.forced[position], n - 1), n)
            trace.branching.append(n)
            return _sure(0, n)
        config = self.config
        costs = self._arm_costs(module)
        if config.chooser == "cheapest":
            return _sure(int(np.argmin(costs)), n)
        if config.chooser == "dearest":
            return _sure(int(np.argmax(costs)), n)
        lam = self.controller.lam
        if config.chooser == "random":
            # Maximum entropy at the budget: the likelier the cheaper, at no temperature but
            # the multiplier's own (a smooth response keeps the spend steady).
            p = softmax(-lam * costs)
            return int(self._rng.choice(n, p=p)), p
        policy = self._policy(site, module)
        trace.charge(("policy", site, occurrence), policy.n_params / BERT_BASE_PARAMETERS)
        return policy.choose(x, lam, config.temperature, config.exploration,
                             config.exploration_floor, self._rng)

    def _decision(self, trace: Trace, error: str | None, version: int) -> Decision:
        calls = trace.calls
        # Where the answer came from: the dearest call of the run (the program's own, if none).
        top = max(reversed(calls), key=lambda c: c.charged) if calls else None
        stage = top.backend if top is not None else PROGRAM_STAGE
        names = self.stage_names
        label = trace.final if error is None else None
        return Decision(
            event_id=trace.event.id,
            label=None if label is None else self.task.labels.name(label),
            label_index=label, stage=stage,
            stage_index=names.index(stage) if stage in names else 0,
            confidence=calls[-1].confidence if calls else 1.0, cost=trace.cost,
            path=[f"{c.module}={c.backend}" for c in calls], model_version=version, error=error,
            backends=_backends_of(calls))

    # -- the hindsight oracle ---------------------------------------------------------------------

    @property
    def probe_free(self) -> bool:
        """Whether every backend can be asked again for free (the oracle needs it)."""
        return all(b.probe_free for m in self.program.modules for b in m.backends)

    async def outcomes(self, event: Event) -> list[tuple[int | None, float]]:
        """Every answer some choice of backends gives ``event`` now, with its cost: each run
        forces one combination of choices (at most :data:`MAX_ORACLE_RUNS`). Nothing is learned
        or counted."""
        if not self.probe_free:
            raise ConfigurationError("the oracle asks every backend of every call: it needs "
                                     "backends that can be asked for free (stages, recorded "
                                     "answers)")
        memo: dict[Any, Any] = {}
        found: list[tuple[int | None, float]] = []
        queue: list[list[int]] = [[]]
        features: np.ndarray | None = None
        while queue and len(found) < MAX_ORACLE_RUNS:
            forced = queue.pop()
            if features is None:
                trace = self.start([event], forced, [memo])[0]
                features = trace.features
            else:  # the featurizer's reading is in the memo: paid again, not computed again
                trace = Trace(event, self, features, forced=forced, memo=memo)
                for stage in self.featurizer:
                    trace.charge(("stage", id(stage), event.text), stage.cost)
            error = await self._run(trace)
            found.append((trace.final if error is None else None, trace.cost))
            for j, n_arms in enumerate(trace.branching):
                prefix = forced + [0] * j
                queue.extend([*prefix, arm] for arm in range(1, n_arms))
        return found

    # -- learning ---------------------------------------------------------------------------------

    def learn(self, demos: Sequence[Demonstration]) -> None:
        """Learn from ground-truth demonstrations (others are ignored: an LLM's answer is not the
        truth a program is scored against)."""
        k = len(self.task.labels)
        for demo in demos:
            if not 0 <= demo.label < k:
                raise ValueError(f"demonstration label {demo.label} is not in 0..{k - 1}")
        truths = [d for d in demos if d.source == SOURCE_GROUND_TRUTH]
        if not truths:
            return
        lessons = _Lessons()
        for demo in truths:
            trace = self._traces.pop(demo.event.id)
            self._teach_featurizer(demo, trace, lessons)
            if trace is None:  # answered elsewhere, or long ago: only the stages learn
                continue
            self._teach_modules(trace, self.task.labels.name(demo.label), lessons)
            if self.config.chooser == "learned":
                self._reward(trace, demo.label)
            self.utility.observe(trace.final, demo.label)
            self.n_rewarded += 1
        lessons.learn()
        self.n_learned += len(truths)
        self.version += 1

    def _teach_featurizer(self, demo: Demonstration, trace: Trace | None,
                          lessons: _Lessons) -> None:
        memo = trace.memo if trace is not None else {}
        upstream: Stage | None = None
        for stage in self.featurizer:
            lessons.add(stage, demo.event.text, demo.label, upstream, memo)
            upstream = stage

    def _teach_modules(self, trace: Trace, truth: str, lessons: _Lessons) -> None:
        for call in trace.calls:
            module = self.modules[call.module]
            target = module.teach(truth)
            if target is None:
                continue
            index = module.labels.index(target)
            for backend in module.backends:
                if not isinstance(backend, StageBackend) or not backend.learns_module_labels:
                    continue
                try:
                    text = backend.text(call.value)
                except ModuleCallFailed:
                    continue
                chain: list[StageBackend] = []
                step: StageBackend | None = backend
                while step is not None:
                    chain.insert(0, step)
                    step = step.upstream
                upstream: Stage | None = None
                for part in chain:
                    lessons.add(part.stage, text, index, upstream, trace.memo)
                    upstream = part.stage

    def _reward(self, trace: Trace, truth: int) -> None:
        """REINFORCE: each drawn call of the run is credited with the final answer's utility less
        the price of the cost from that call on."""
        utility = self.utility(trace.final, truth)
        lam = self.controller.lam
        config = self.config
        warming = self.warming_up
        for call in trace.calls:
            # (a run another worker answered may be the first this worker hears of its site)
            policy = self._policy(call.site, self.modules[call.module])
            ret = utility - lam * (trace.cost - call.cost_before) / self.reference_cost
            policy.update(call.features, call.arm, call.behaviour, ret,
                          temperature=config.temperature,
                          learning_rate=0.0 if warming else config.learning_rate,
                          learning_decay=config.learning_decay,
                          baseline_rate=config.baseline_rate)

    # -- runs shared across a fleet ----------------------------------------------------------------

    def run_record(self, event_id: str) -> dict[str, Any] | None:
        """What learning needs of the run of ``event_id``, as JSON data (None if this worker no
        longer holds it): the choices, their features and probabilities, and the costs. It
        travels with the event's ground truth to the fleet's learner, which may be another
        worker."""
        trace = self._traces.get(event_id)
        if trace is None:
            return None
        return {"final": trace.final, "cost": trace.cost, "calls": [
            {"site": c.site, "module": c.module, "arm": c.arm, "backend": c.backend,
             "features": [float(v) for v in c.features],
             "behaviour": [float(v) for v in c.behaviour], "cost_before": c.cost_before,
             "charged": c.charged, "value": c.value if _is_json(c.value) else None}
            for c in trace.calls]}

    def adopt_run(self, event: Event, record: dict[str, Any]) -> bool:
        """Hold the run another worker answered ``event`` with (a :meth:`run_record`), for its
        ground truth to teach the policies here; a run this worker holds itself is kept. False
        (and nothing held) for a record that does not fit this program."""
        if event.id in self._traces:
            return True
        try:
            trace = self._trace_of(event, record)
        except (KeyError, TypeError, ValueError, IndexError):
            return False
        self._traces.put(event.id, trace)
        return True

    def _trace_of(self, event: Event, record: dict[str, Any]) -> Trace:
        final = record["final"]
        if final is not None and not 0 <= int(final) < len(self.task.labels):
            raise ValueError(f"final answer {final}")
        trace = Trace(event, self, np.zeros(self.n_features - 1),
                      final=None if final is None else int(final), cost=_finite(record["cost"]))
        for item in record["calls"]:
            module = self.modules[str(item["module"])]
            arm = int(item["arm"])
            features = np.array([_finite(v) for v in item["features"]], dtype=np.float64)
            behaviour = np.array([_finite(v) for v in item["behaviour"]], dtype=np.float64)
            if not 0 <= arm < len(module.backends) or len(features) != self.n_features \
                    or len(behaviour) != len(module.backends) or behaviour.min() < 0 \
                    or abs(behaviour.sum() - 1.0) > 1e-6:
                raise ValueError(f"a call of module {module.name!r} that does not fit it")
            call = Call(str(item["site"]), module.name, arm, module.backends[arm].name,
                        features, behaviour, _finite(item["cost_before"]), item.get("value"))
            call.charged = _finite(item["charged"])
            trace.calls.append(call)
        return trace

    # -- state ------------------------------------------------------------------------------------

    def _shape(self) -> dict[str, Any]:
        return {"kind": "program", "program": self.program.name, "task": self.task.name,
                "labels": list(self.task.labels.names),
                "modules": [[m.name, list(m.labels.names), [b.name for b in m.backends]]
                            for m in self.program.modules],
                "stages": [s.name for s in self._stages]}

    def state_bytes(self, compress: bool = True) -> bytes:
        """Every learned part: stages, site policies, the price of cost, the running F1."""
        sites = sorted(self.policies)
        meta: dict[str, Any] = {
            **self._shape(), "version": self.version, "n_learned": self.n_learned,
            "n_rewarded": self.n_rewarded, "lam": self.controller.lam,
            "utility": self.utility.meta(), "rng": self._rng.bit_generator.state,
            "sites": [[s, self._site_module[s], self.policies[s].n_updates] for s in sites],
        }
        arrays: dict[str, np.ndarray] = {}
        for j, stage in enumerate(self._stages):
            arrays[f"stage{j}"] = np.frombuffer(stage.state_bytes(), dtype=np.uint8)
        for i, site in enumerate(sites):
            for key, value in self.policies[site].arrays().items():
                arrays[f"site{i}_{key}"] = value
        return pack_state(meta, arrays, compress=compress)

    def load_state(self, data: bytes) -> None:
        """Replace every learned part; :class:`ModelStateError` (and nothing changed) if the
        bytes are not this program's."""
        load_all_or_nothing(data, self._shape(), lambda: self.state_bytes(compress=False),
                            self._load, "program")

    def _load(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for j, stage in enumerate(self._stages):
            stage.load_state(arrays[f"stage{j}"].tobytes())
        policies: dict[str, SitePolicy] = {}
        owners: dict[str, str] = {}
        for i, (site, module_name, n_updates) in enumerate(meta["sites"]):
            module = self.modules[str(module_name)]
            policy = SitePolicy(self._arm_costs(module), self.n_features)
            policy.load_arrays({key: arrays[f"site{i}_{key}"] for key in policy.arrays()},
                               int(n_updates))
            policies[str(site)], owners[str(site)] = policy, module.name
        self.policies, self._site_module = policies, owners
        self.controller.lam = float(meta["lam"])
        self.utility.load(meta["utility"])
        self.n_learned = int(meta["n_learned"])
        self.n_rewarded = int(meta["n_rewarded"])
        self.version = int(meta["version"])
        self._rng.bit_generator.state = meta["rng"]


def _price_floor(config: ProgramConfig) -> float:
    """The lowest price of cost: 0 under a cap; below 0 for a target (a context-free draw at
    temperature 1 needs a wider range to reach its budget than a policy at its temperature)."""
    if config.chooser == "random":
        return -20.0
    return 0.0 if config.budget_mode == "cap" else -1.0


def _is_json(value: Any) -> bool:
    """Whether ``value`` travels as JSON unchanged (a module's input, usually the text)."""
    if value is None or isinstance(value, str | bool | int | float):
        return not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _backends_of(calls: Sequence[Call]) -> dict[str, str | list[str]]:
    """Each module the run called, with its backend (its backends in call order, if called
    more than once)."""
    chosen: dict[str, list[str]] = {}
    for call in calls:
        chosen.setdefault(call.module, []).append(call.backend)
    return {module: names[0] if len(names) == 1 else names for module, names in chosen.items()}


def _sure(arm: int, n: int) -> tuple[int, np.ndarray]:
    p = np.zeros(n)
    p[arm] = 1.0
    return arm, p


class _Lessons:
    """The stage updates of one learning batch: every stage learns once per text, from the
    probabilities its upstream stage gave at answer time (computed now where the run never
    needed them, before any stage of this batch learns)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, str]] = set()
        self._items: list[tuple[Stage, str, int, Stage | None, dict[Any, Any]]] = []
        self._upstream_of: dict[int, Stage | None] = {}

    def add(self, stage: Stage, text: str, target: int, upstream: Stage | None,
            memo: dict[Any, Any]) -> None:
        self._upstream_of[id(stage)] = upstream
        if (id(stage), text) in self._seen:
            return
        self._seen.add((id(stage), text))
        self._items.append((stage, text, target, upstream, memo))

    def learn(self) -> None:
        resolved = [(stage, text, target,
                     None if upstream is None else self._proba(upstream, text, memo))
                    for stage, text, target, upstream, memo in self._items]
        by_stage: dict[int, list[tuple[Stage, str, int, np.ndarray | None]]] = {}
        for item in resolved:
            by_stage.setdefault(id(item[0]), []).append(item)
        for items in by_stage.values():
            ups = [u for *_, u in items]
            upstream = None if any(u is None for u in ups) else np.stack(
                [u for u in ups if u is not None])
            items[0][0].learn([t for _, t, _, _ in items], [y for _, _, y, _ in items], upstream)

    def _proba(self, stage: Stage, text: str, memo: dict[Any, Any]) -> np.ndarray:
        """``stage``'s probabilities for ``text``: as the run saw them, else computed now."""
        found = memo.get(("proba", id(stage), text))
        if found is None:
            above = self._upstream_of.get(id(stage))
            upstream = None if above is None else self._proba(above, text, memo)[None, :]
            found = memo[("proba", id(stage), text)] = stage.predict_proba([text], upstream)[0]
        return np.asarray(found)
