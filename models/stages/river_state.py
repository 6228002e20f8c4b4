"""River estimators to and from the project's state format, without pickle.

A River model is a tree of plain Python objects: River classes whose attributes hold numbers,
strings, containers, other River objects and a few functions (a tokenizer, a default factory).
:func:`encode` walks that tree into JSON-able data plus numpy arrays (the two halves of
:mod:`streamcascade.models.state`); :func:`decode` rebuilds it. Only what this module knows is
written or read:

- ``None``, booleans, ints, floats, strings, bytes; numpy scalars and arrays of the state
  format's dtypes;
- lists, tuples, sets, frozensets, dicts, ``OrderedDict``, ``Counter``, ``defaultdict``, ``deque``;
- ``random.Random`` (by its state);
- instances of River classes from :data:`~streamcascade.models.stages.river_spec.RIVER_FAMILIES`,
  rebuilt the way pickle's protocol 2 would (a class, its arguments, its attribute state), but
  calling nothing except those classes;
- references to River functions and classes, ``functools.partial`` of them, and a short list of
  builtins (:data:`BUILTIN_CALLABLES`).

Anything else (a lambda, an open file, a class of another library) is refused with a
:class:`~streamcascade.models.errors.ModelStateError`, when writing and when reading. Objects
referenced twice (a pipeline's steps and its cached plan) are written once and come back shared.

>>> from river import feature_extraction, naive_bayes
>>> model = feature_extraction.TFIDF() | naive_bayes.MultinomialNB()
>>> model.learn_one("a fine day", "sun")
>>> tree, arrays = encode(model)
>>> copy = decode(tree, arrays)
>>> copy.predict_proba_one("fine") == model.predict_proba_one("fine")
True
"""

from __future__ import annotations

import collections
import copy
import copyreg
import functools
import random
from collections.abc import Callable, Iterable, Mapping
from types import BuiltinFunctionType, FunctionType
from typing import Any

import numpy as np

from streamcascade.models.errors import ModelStateError
from streamcascade.models.stages.river_spec import resolve_river, river_family

_SCALARS = (type(None), bool, int, float, str)
#: numpy dtypes that :mod:`streamcascade.models.state` stores.
_ARRAY_DTYPES = frozenset({"float32", "float64", "int32", "int64", "uint32", "uint8", "bool"})

#: Callables outside River that River models hold as attributes (default factories, the text
#: preprocessing of ``feature_extraction``), by the name they are written under.
BUILTIN_CALLABLES: dict[str, Callable[..., Any]] = {
    "int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
    "set": set, "tuple": tuple, "frozenset": frozenset,
    "str.lower": str.lower, "str.upper": str.upper, "str.strip": str.strip,
    "collections.Counter": collections.Counter,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "collections.deque": collections.deque,
    "copy.deepcopy": copy.deepcopy,
}
_BUILTIN_NAMES = {id(f): name for name, f in BUILTIN_CALLABLES.items()}
#: What protocol 2 reduces an ordinary instance to: ``cls.__new__(cls, *args)``.
_NEWOBJ = copyreg.__newobj__  # type: ignore[attr-defined]

_MAPPINGS: dict[str, type[dict[Any, Any]]] = {
    "dict": dict, "OrderedDict": collections.OrderedDict, "Counter": collections.Counter}
_SEQUENCES: dict[str, Callable[[Iterable[Any]], Any]] = {
    "list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def encode(obj: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``obj`` as JSON-able data and the arrays it refers to by name."""
    encoder = _Encoder()
    try:
        return encoder.encode(obj), encoder.arrays
    except RecursionError:
        raise ModelStateError("the River model is nested too deeply to write") from None


def decode(data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The object :func:`encode` wrote; a :class:`ModelStateError` for anything it would not
    have written."""
    try:
        return _Decoder(arrays).decode(data)
    except ModelStateError:
        raise
    except (LookupError, ImportError, TypeError, ValueError, AttributeError, RecursionError,
            OverflowError) as exc:
        raise ModelStateError(f"River model state is not valid: {type(exc).__name__}: {exc}"
                              ) from None


def _river_name(obj: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` of a River class or function that resolves back to ``obj``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str) and river_family(module)):
        return None
    try:
        return (module, qualname) if resolve_river(module, qualname) is obj else None
    except (LookupError, ImportError):
        return None


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        # id -> (object, number): holding the object keeps its id from being reused by a
        # temporary (``__reduce_ex__`` builds new tuples) while the walk runs.
        self._seen: dict[int, tuple[Any, int]] = {}

    def encode(self, obj: Any) -> Any:
        if type(obj) in _SCALARS:
            return obj
        seen = self._seen.get(id(obj))
        if seen is not None:
            return {"@": "ref", "#": seen[1]}
        number = len(self._seen)
        self._seen[id(obj)] = (obj, number)
        out = self._encode_new(obj)
        out["#"] = number
        return out

    def _encode_new(self, obj: Any) -> dict[str, Any]:
        kind = type(obj)
        if kind is collections.defaultdict:
            return {"@": "defaultdict", "f": self.encode(obj.default_factory),
                    **self._items(obj)}
        for tag, mapping in _MAPPINGS.items():
            if kind is mapping:
                return {"@": tag, **self._items(obj)}
        for tag, sequence in _SEQUENCES.items():
            if kind is sequence:
                return {"@": tag, "v": [self.encode(v) for v in obj]}
        if kind is collections.deque:
            return {"@": "deque", "maxlen": obj.maxlen, "v": [self.encode(v) for v in obj]}
        if kind is np.ndarray:
            if obj.dtype.name not in _ARRAY_DTYPES:
                raise ModelStateError(f"a River model holds an array of dtype {obj.dtype}")
            name = str(len(self.arrays))
            self.arrays[name] = obj
            return {"@": "array", "a": name}
        if isinstance(obj, np.generic) and obj.dtype.name in _ARRAY_DTYPES:
            return {"@": "np", "dtype": obj.dtype.name, "v": obj.item()}
        if kind is bytes:  # the state of River's compiled (Rust) classes
            name = str(len(self.arrays))
            self.arrays[name] = np.frombuffer(obj, dtype=np.uint8)
            return {"@": "bytes", "a": name}
        if kind is random.Random:
            return {"@": "random", "state": self.encode(obj.getstate())}
        if kind is functools.partial:
            return {"@": "partial", "f": self.encode(obj.func),
                    "args": self.encode(obj.args), "kw": self.encode(obj.keywords)}
        builtin = _BUILTIN_NAMES.get(id(obj))
        if builtin is not None:
            return {"@": "builtin", "name": builtin}
        if isinstance(obj, type | FunctionType | BuiltinFunctionType):
            river = _river_name(obj)
            if river is None:
                raise ModelStateError(f"a River model holds {obj!r}, which cannot be written")
            return {"@": "callable", "m": river[0], "q": river[1]}
        if _river_name(kind) is not None:
            return self._encode_river(obj)
        raise ModelStateError(
            f"a River model holds a {kind.__module__}.{kind.__qualname__}, which cannot be written")

    def _items(self, mapping: Mapping[Any, Any]) -> dict[str, Any]:
        return {"k": [self.encode(k) for k in mapping], "v": [self.encode(v)
                                                             for v in mapping.values()]}

    def _encode_river(self, obj: Any) -> dict[str, Any]:
        """A River object as pickle's protocol 2 would reduce it, every part encoded."""
        reduced = obj.__reduce_ex__(2)
        if not isinstance(reduced, tuple) or len(reduced) < 2:
            raise ModelStateError(f"{type(obj).__qualname__} does not reduce to a class")
        func, args = reduced[0], tuple(reduced[1])
        state, items, pairs = (*reduced[2:], None, None, None)[:3]
        if func is _NEWOBJ:
            cls, args, call = args[0], args[1:], False
        else:
            cls, call = func, True
        name = _river_name(cls)
        if name is None or not isinstance(cls, type):
            raise ModelStateError(f"{type(obj).__qualname__} reduces to {func!r}, not a class")
        out: dict[str, Any] = {"@": "river", "m": name[0], "q": name[1], "call": call,
                               "args": self.encode(args), "state": self.encode(state)}
        if items is not None:
            out["items"] = self.encode(list(items))
        if pairs is not None:
            out["pairs"] = self.encode(dict(pairs))
        return out


class _Decoder:
    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._made: dict[int, Any] = {}

    def decode(self, data: Any) -> Any:
        if type(data) in _SCALARS:
            return data
        if not isinstance(data, dict) or not isinstance(data.get("@"), str):
            raise ModelStateError(f"River model state holds {type(data).__name__} data")
        tag = data["@"]
        if tag == "ref":
            number = data["#"]
            if number not in self._made:
                raise ModelStateError(f"River model state refers to object {number} too early")
            return self._made[number]
        number = data["#"]
        if not isinstance(number, int) or number in self._made:
            raise ModelStateError(f"River model state numbers object {number!r} twice")
        return self._decode_new(tag, data, number)

    def _keep(self, number: int, obj: Any) -> Any:
        self._made[number] = obj
        return obj

    def _decode_new(self, tag: str, data: dict[str, Any], number: int) -> Any:
        if tag == "defaultdict":
            factory = self.decode(data["f"])
            if factory is not None and not callable(factory):
                raise ModelStateError("River model state holds a defaultdict with no factory")
            return self._fill(self._keep(number, collections.defaultdict(factory)), data)
        if tag in _MAPPINGS:
            return self._fill(self._keep(number, _MAPPINGS[tag]()), data)
        if tag == "list":
            out = self._keep(number, [])
            out.extend(self.decode(v) for v in data["v"])
            return out
        if tag in _SEQUENCES:  # immutable or hashed: made from their items, so kept after them
            return self._keep(number, _SEQUENCES[tag](self.decode(v) for v in data["v"]))
        if tag == "deque":
            out = self._keep(number, collections.deque(maxlen=data["maxlen"]))
            out.extend(self.decode(v) for v in data["v"])
            return out
        if tag == "array":
            return self._keep(number, np.array(self.arrays[str(data["a"])]))
        if tag == "bytes":
            return self._keep(number, self.arrays[str(data["a"])].astype(np.uint8).tobytes())
        if tag == "np":
            if data["dtype"] not in _ARRAY_DTYPES:
                raise ModelStateError(f"River model state holds a numpy {data['dtype']}")
            return self._keep(number, np.dtype(data["dtype"]).type(data["v"]))
        if tag == "random":
            rng = random.Random()
            rng.setstate(self.decode(data["state"]))
            return self._keep(number, rng)
        if tag == "partial":
            func = self.decode(data["f"])
            if not callable(func):
                raise ModelStateError("River model state holds a partial of no function")
            return self._keep(number, functools.partial(
                func, *self.decode(data["args"]), **self.decode(data["kw"])))
        if tag == "builtin":
            return self._keep(number, BUILTIN_CALLABLES[data["name"]])
        if tag == "callable":
            found = resolve_river(data["m"], data["q"])
            if not isinstance(found, type | FunctionType | BuiltinFunctionType):
                raise ModelStateError(f"{data['m']}.{data['q']} is not a class or function")
            return self._keep(number, found)
        if tag == "river":
            return self._decode_river(data, number)
        raise ModelStateError(f"River model state holds an unknown kind of value {tag!r}")

    def _fill(self, mapping: dict[Any, Any], data: dict[str, Any]) -> dict[Any, Any]:
        keys, values = data["k"], data["v"]
        if len(keys) != len(values):
            raise ModelStateError("River model state holds a mapping of unequal keys and values")
        for key, value in zip(keys, values, strict=True):
            mapping[self.decode(key)] = self.decode(value)
        return mapping

    def _decode_river(self, data: dict[str, Any], number: int) -> Any:
        cls = resolve_river(data["m"], data["q"])
        if not isinstance(cls, type):
            raise ModelStateError(f"{data['m']}.{data['q']} is not a class")
        args = self.decode(data["args"])
        if not isinstance(args, tuple):
            raise ModelStateError("River model state holds arguments that are not a tuple")
        obj = self._keep(number, cls(*args) if data["call"] else cls.__new__(cls, *args))
        state = self.decode(data["state"])
        if state is not None:
            _set_state(obj, state)
        if "items" in data:
            for item in self.decode(data["items"]):
                obj.append(item)
        if "pairs" in data:
            for key, value in self.decode(data["pairs"]).items():
                obj[key] = value
        return obj


def _set_state(obj: Any, state: Any) -> None:
    """What pickle does with an object's state: ``__setstate__``, else its ``__dict__`` and
    slots."""
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise ModelStateError(f"River model state gives {type(obj).__qualname__} a "
                                  f"{type(state).__name__} for attributes")
        obj.__dict__.update(state)
    if slots:
        if not (isinstance(slots, dict) and all(isinstance(k, str) for k in slots)):
            raise ModelStateError(f"River model state gives {type(obj).__qualname__} bad slots")
        for key, value in slots.items():
            setattr(obj, key, value)
