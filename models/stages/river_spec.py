"""River estimators named by a small spec string, and the River families a stage may use.

A spec is a Python-like expression over River's modules, without ``river.`` in front::

    feature_extraction.TFIDF | naive_bayes.MultinomialNB(alpha=0.1)
    multiclass.OneVsRestClassifier(linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.5)))

Each name is a River class; arguments are literals (numbers, strings, tuples, lists, dicts, None,
booleans) or other River classes, called or not (a bare name is called without arguments); ``|``
chains steps into a pipeline, as in River. The spec is parsed, never evaluated: nothing but River
classes of the families in :data:`RIVER_FAMILIES` can be named, so a spec from a settings file
cannot run code.

>>> model = build_model("feature_extraction.TFIDF | naive_bayes.MultinomialNB(alpha=0.5)")
>>> [type(step).__name__ for step in model.steps.values()]
['TFIDF', 'MultinomialNB']
>>> normalise_spec("feature_extraction.TFIDF|naive_bayes.MultinomialNB( alpha = 0.5 )")
'feature_extraction.TFIDF | naive_bayes.MultinomialNB(alpha=0.5)'
"""

from __future__ import annotations

import ast
import importlib
from types import ModuleType
from typing import Any

from streamcascade.models.errors import ConfigurationError

#: River's subpackages whose classes a spec may name and a state may hold: models, their parts
#: and their statistics. Left out are the ones that read files or the network (datasets, stream),
#: wrap other libraries (compat) or run evaluations.
RIVER_FAMILIES = frozenset({
    "_river_rust", "anomaly", "base", "compose", "drift", "dummy", "ensemble",
    "feature_extraction", "feature_selection", "forest", "imblearn", "linear_model", "metrics",
    "multiclass", "naive_bayes", "neighbors", "optim", "preprocessing", "proba", "rules",
    "sketch", "stats", "tree", "utils",
})


def river_family(module: str) -> str | None:
    """The family of a module path (``"river.tree.nodes"`` -> ``"tree"``) when it is allowed."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "river" and parts[1] in RIVER_FAMILIES:
        return parts[1]
    return None


def resolve_river(module: str, qualname: str) -> Any:
    """The class or function ``qualname`` of River module ``module``.

    A ``LookupError`` for anything outside the allowed families, a private or local name, a name
    that is not there, or one that River only imported from elsewhere (``tree.math.log``): what is
    found must itself be defined in an allowed family.
    """
    if river_family(module) is None:
        raise LookupError(f"{module} is not a River module this project allows")
    parts = qualname.split(".")
    if not qualname or any(not p.isidentifier() or p.startswith("_") for p in parts):
        raise LookupError(f"{module}.{qualname} is not a public River name")
    obj: Any = importlib.import_module(module)
    for part in parts:
        obj = getattr(obj, part, None)
        home = getattr(obj, "__name__" if isinstance(obj, ModuleType) else "__module__", None)
        if obj is None or not isinstance(home, str) or river_family(home) is None:
            raise LookupError(f"{module}.{qualname} is not a River class or function")
    return obj


def normalise_spec(spec: str) -> str:
    """``spec`` in one canonical spelling (spaces, quotes), so equal specs compare equal."""
    return ast.unparse(_parse(spec))


def build_model(spec: str) -> Any:
    """A fresh River estimator (or pipeline) from ``spec``; a :class:`ConfigurationError` for a
    spec that does not parse, names something that is not an allowed River class, or whose
    arguments River refuses."""
    return _build(_parse(spec), spec)


def _parse(spec: str) -> ast.expr:
    try:
        return ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ConfigurationError(f"River model spec {spec!r} does not parse: {exc.msg}") from None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _river_class(name: str, spec: str) -> type:
    family, _, rest = name.partition(".")
    try:
        found = resolve_river(f"river.{family}", rest)
    except (LookupError, ImportError):
        found = None
    if not isinstance(found, type):
        raise ConfigurationError(
            f"{name!r} in River model spec {spec!r} is not a River class "
            f"(write e.g. naive_bayes.MultinomialNB; families: {sorted(RIVER_FAMILIES)})")
    return found


def _build(node: ast.expr, spec: str) -> Any:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _build(node.left, spec) | _build(node.right, spec)
    name = _dotted(node.func if isinstance(node, ast.Call) else node)
    if name is None:
        raise ConfigurationError(
            f"River model spec {spec!r}: {ast.unparse(node)!r} is not a River class or call")
    cls = _river_class(name, spec)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if isinstance(node, ast.Call):
        args = [_argument(a, spec) for a in node.args]
        for keyword in node.keywords:
            if keyword.arg is None:
                raise ConfigurationError(f"River model spec {spec!r}: no ** arguments")
            kwargs[keyword.arg] = _argument(keyword.value, spec)
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"River model spec {spec!r}: {name}: {exc}") from None


def _argument(node: ast.expr, spec: str) -> Any:
    if isinstance(node, ast.Call | ast.Name | ast.Attribute) or (
            isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
        return _build(node, spec)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ConfigurationError(f"River model spec {spec!r}: {ast.unparse(node)!r} is neither "
                                 "a literal nor a River class") from None
