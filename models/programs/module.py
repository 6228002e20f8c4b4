"""Modules: typed callables a program awaits, each with its labels and its backends.

A module is declared once::

    gate = Module("gate", ["clean", "suspect"], [StageBackend(...), LLMModuleBackend(...)],
                  teach={"hate": "suspect", "noHate": "clean"})

and called inside a program as ``await modules.gate(event.text)``; the runtime's policy picks the
backend that answers that call. ``teach`` maps the final answer's ground truth to the label this
module should have given (``None``: the truth says nothing about it), which is how the module's
learnable backends learn; a module without it has no learnable backend that improves.

A call is identified by its *site*: where in the program's code it is made (the calling
function's qualified name, the line within the function and the column of the call), never by
its arguments, so a call whose argument is computed, or one made many times in a loop, is one
site whose sub-policy learns from all of its calls. A module called inside another module's
backend is a site under the caller's site. ``site="name"`` names a site by hand (stable across
edits of the program's code).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import CodeType, FrameType
from typing import Any

from streamcascade.models.errors import ConfigurationError
from streamcascade.models.programs.backends import Backend
from streamcascade.models.programs.trace import CURRENT
from streamcascade.models.types import LabelSet

#: The site whose backend is running in the current task (a module called inside it nests).
PARENT_SITE: ContextVar[str | None] = ContextVar("streamcascade_program_site", default=None)

_SITES: dict[tuple[CodeType, int], str] = {}


def call_site(frame: FrameType) -> str:
    """Where ``frame`` is calling from: ``qualname:line-in-function:column``."""
    code, offset = frame.f_code, frame.f_lasti
    found = _SITES.get((code, offset))
    if found is None:
        positions = list(code.co_positions())
        at = offset // 2  # one position per two-byte code unit
        line, _, column, _ = positions[at] if 0 <= at < len(positions) else (
            frame.f_lineno, None, None, None)
        first = code.co_firstlineno
        found = f"{code.co_qualname}:{(line or first) - first}:{column or 0}"
        _SITES[(code, offset)] = found
    return found


class Module:
    """A typed callable of a program: ``labels`` it answers with, ``backends`` that answer."""

    def __init__(self, name: str, labels: Sequence[str] | LabelSet, backends: Sequence[Backend],
                 *, teach: Mapping[str, str | None] | Callable[[str], str | None] | None = None,
                 description: str = "") -> None:
        if not name or not name.isidentifier():
            raise ConfigurationError(f"a module's name must be an identifier, got {name!r}")
        try:
            self.labels = labels if isinstance(labels, LabelSet) else LabelSet.of(labels)
        except ValueError as exc:
            raise ConfigurationError(f"module {name!r}: {exc}") from None
        self.name = name
        self.backends = list(backends)
        self.description = description
        if teach is None:
            self._teach: Callable[[str], str | None] | None = None
        elif isinstance(teach, Mapping):
            self._teach = dict(teach).get
        else:
            self._teach = teach

    def validate(self) -> None:
        """Refuse a module that cannot answer: no backend, twice the same name, a stage over
        other labels."""
        if not self.backends:
            raise ConfigurationError(f"module {self.name!r} has no backend")
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"module {self.name!r}: backend names repeat: {names}")
        for backend in self.backends:
            if getattr(backend, "decide", None) is not None:
                continue  # (it reads the module's labels from its own)
            for stage in backend.stages()[-1:]:
                if stage.labels != self.labels:
                    raise ConfigurationError(
                        f"module {self.name!r}: backend {backend.name!r} answers with "
                        f"{list(stage.labels.names)}, the module with {list(self.labels.names)}")
            if backend.cost < 0:
                raise ConfigurationError(f"backend {backend.name!r} has a negative cost")

    def teach(self, truth: str) -> str | None:
        """The label this module should have given, by the final answer's ground truth."""
        if self._teach is None:
            return None
        label = self._teach(truth)
        return label if label is not None and label in self.labels.names else None

    def __call__(self, value: Any, *, site: str | None = None) -> Awaitable[str]:
        """The module's answer to ``value`` (a label name), from the backend the policy picks."""
        trace = CURRENT.get()
        if trace is None:
            raise RuntimeError(f"module {self.name!r} was called outside a program run")
        where = site if site is not None else call_site(sys._getframe(1))
        key = f"{self.name}@{where}"
        parent = PARENT_SITE.get()
        if parent is not None:
            key = f"{parent}/{key}"
        return trace.runner.call_module(trace, self, value, key)

    def __repr__(self) -> str:
        return (f"Module({self.name!r}, {list(self.labels.names)}, "
                f"backends={[b.name for b in self.backends]})")


class Modules(Mapping[str, Module]):
    """A program's modules by name, also as attributes: ``modules.gate(...)``."""

    def __init__(self, modules: Sequence[Module]) -> None:
        self._by_name = {m.name: m for m in modules}
        if len(self._by_name) != len(modules):
            raise ConfigurationError(f"module names repeat: {[m.name for m in modules]}")

    def __getattr__(self, name: str) -> Module:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(f"the program has no module {name!r}") from None

    def __getitem__(self, name: str) -> Module:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)
