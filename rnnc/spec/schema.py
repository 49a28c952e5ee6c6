"""The schema of the ``model`` and ``train`` blocks, in one declarative table.

The same table validates a spec (unknown keys with did-you-mean, wrong types,
out-of-range values; every error points at the offending node) and produces
``rnnc schema``, a JSON Schema of the YAML form for editors.

Validation returns plain Python values with every default filled in. A
*choice* (``updater: {adam: {lr: 1e-3}}``, or just ``updater: adam``) becomes
``(name, {option: value})``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rnnc.errors import SpecError, clip, did_you_mean, in_syntax, shown
from rnnc.spec.ast import CList, CMap, CScalar


class Type:
    def validate(self, node: Any, where: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def json(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__.lower()


def _span(node: Any):
    return getattr(node, "span", None)


def _scalar(node: Any, where: str, what: str) -> Any:
    if not isinstance(node, CScalar):
        raise SpecError(f"{where} must be {what}", _span(node))
    return node.value


@dataclass
class Num(Type):
    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    auto: bool = False  # also accepts the word `auto`

    def describe(self) -> str:
        s = "an integer" if self.integer else "a number"
        if self.auto:
            s += " or auto"
        return s

    def validate(self, node, where):
        v = _scalar(node, where, self.describe())
        if self.auto and v == "auto":
            return "auto"
        ok_type = isinstance(v, int) if self.integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok_type:
            raise SpecError(f"{where} must be {self.describe()}, not {shown(v)}", _span(node))
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            op = ">" if self.lo_open else ">="
            raise SpecError(f"{where} must be {op} {self.lo}, not {v}", _span(node))
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            op = "<" if self.hi_open else "<="
            raise SpecError(f"{where} must be {op} {self.hi}, not {v}", _span(node))
        return float(v) if not self.integer else int(v)

    def json(self):
        t: dict = {"type": "integer" if self.integer else "number"}
        if self.lo is not None:
            t["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
        if self.hi is not None:
            t["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
        return {"anyOf": [t, {"const": "auto"}]} if self.auto else t


@dataclass
class Bool(Type):
    def validate(self, node, where):
        v = _scalar(node, where, "true or false")
        if not isinstance(v, bool):
            raise SpecError(f"{where} must be true or false, not {shown(v)}", _span(node))
        return v

    def json(self):
        return {"type": "boolean"}


@dataclass
class Str(Type):
    def validate(self, node, where):
        v = _scalar(node, where, "a string")
        if not isinstance(v, str):
            raise SpecError(f"{where} must be a string, not {shown(v)}", _span(node))
        return v

    def json(self):
        return {"type": "string"}


@dataclass
class Enum(Type):
    choices: tuple[str, ...]

    def validate(self, node, where):
        v = _scalar(node, where, "one of " + ", ".join(self.choices))
        if v not in self.choices:
            raise SpecError(f"{where} must be one of {', '.join(self.choices)}, not {shown(v)}",
                            _span(node), did_you_mean(str(v), self.choices))
        return v

    def json(self):
        return {"enum": list(self.choices)}


@dataclass
class ListOf(Type):
    item: Type
    length: int | None = None

    def validate(self, node, where):
        if not isinstance(node, CList):
            raise SpecError(f"{where} must be a list", _span(node))
        if self.length is not None and len(node.items) != self.length:
            raise SpecError(f"{where} must have {self.length} items, not {len(node.items)}",
                            _span(node))
        return [self.item.validate(v, f"{where}[{i}]") for i, v in enumerate(node.items)]

    def json(self):
        t = {"type": "array", "items": self.item.json()}
        if self.length is not None:
            t["minItems"] = t["maxItems"] = self.length
        return t


@dataclass
class Any_(Type):
    def validate(self, node, where):
        from rnnc.spec.ast import plain

        return plain(node)

    def json(self):
        return {}


@dataclass
class Fields(Type):
    """A mapping with known keys: ``{key: (type, default)}``; default ``REQUIRED`` is required."""

    fields: dict[str, tuple[Type, Any]]
    shorthand: str | None = None  # a bare scalar means this field: `head: {softmax: last}`
    doc: dict[str, str] = field(default_factory=dict)

    def _mapping_hint(self, node, where: str) -> str | None:
        """`clip norm` (a key's value forgotten) reads as the word norm: say so."""
        key = where.rsplit(".", 1)[-1]
        span = _span(node)
        if isinstance(node, CScalar) and isinstance(node.value, str) and \
                node.value in self.fields:
            return in_syntax(span, f"'{node.value}' needs a value: {key} {node.value} VALUE",
                             f"write {key}: {{{node.value}: VALUE}}")
        if not self.fields:
            return None
        names = ", ".join(self.fields)
        return in_syntax(span, f"write {key} followed by keys and values; its keys: {names}",
                         f"write {key}: {{KEY: VALUE, ...}}; its keys: {names}")

    def validate(self, node, where):
        if self.shorthand is not None and isinstance(node, CScalar | CList):
            node = CMap(((self.shorthand, node),), node.span, (node.span,))
        if node is None:
            node = CMap(())
        if not isinstance(node, CMap):
            raise SpecError(f"{where} must be a mapping", _span(node), self._mapping_hint(
                node, where))
        out = {}
        for key, value in node.items:
            if key not in self.fields:
                raise SpecError(f"unknown key '{clip(key)}' in {where}", node.key_span(key),
                                did_you_mean(key, self.fields))
            out[key] = self.fields[key][0].validate(value, f"{where}.{key}")
        for key, (_, default) in self.fields.items():
            if key not in out:
                if default is REQUIRED:
                    raise SpecError(f"{where} needs '{key}'", _span(node),
                                    _add_hint(key, where, _span(node)))
                out[key] = default
        return out

    def json(self):
        props = {}
        for k, (t, default) in self.fields.items():
            props[k] = dict(t.json())
            if default is not REQUIRED and default is not None and not callable(default):
                props[k]["default"] = default
            if k in self.doc:
                props[k]["description"] = self.doc[k]
        obj = {"type": "object", "properties": props, "additionalProperties": False}
        req = [k for k, (_, d) in self.fields.items() if d is REQUIRED]
        if req:
            obj["required"] = req
        if self.shorthand is not None:
            return {"anyOf": [obj, self.fields[self.shorthand][0].json()]}
        return obj


REQUIRED = object()


def _add_hint(key: str, where: str, span) -> str:
    """'add KEY' in the spec's syntax: a line of a `train { }` or `model NAME { }` block in
    ``.rnn`` (`key: ...` is right in both syntaxes inside a value: `lstm(hidden: 8)`)."""
    if where in ("train", "model"):
        block = "train { }" if where == "train" else "model NAME { }"
        rnn = f"add `{key} ...` inside `{block}`"
        if key == "layers":  # one `layer` line each in the text language
            rnn = f"add at least one `layer CELL(hidden: N)` line inside `{block}`"
        return in_syntax(span, rnn, f"add `{key}: ...` to {where}")
    return f"add `{key}: ...` to {where}"


@dataclass
class Choice(Type):
    """One of several named variants: ``{name: {options}}`` or a bare ``name``."""

    what: str
    variants: Callable[[], dict[str, Type]] | dict[str, Type]

    def _variants(self) -> dict[str, Type]:
        return self.variants() if callable(self.variants) else self.variants

    def validate(self, node, where):
        variants = self._variants()
        if isinstance(node, CScalar) and isinstance(node.value, str):
            name, inner, kspan = node.value, None, node.span
        elif isinstance(node, CMap) and len(node.items) == 1:
            (name, inner), = node.items
            kspan = node.key_span(name)
        else:
            key = where.split('.')[-1]
            raise SpecError(
                f"{where} must name one {self.what}", _span(node),
                in_syntax(_span(node), f"write `{key} NAME` or `{key} NAME(option: value)`",
                          f"write `{key}: NAME` or `{key}: {{NAME: {{option: value}}}}`"),
            )
        if name not in variants:
            raise SpecError(f"unknown {self.what} '{clip(name)}'", kspan,
                            did_you_mean(name, variants))
        return (name, variants[name].validate(inner, f"{where}.{name}"))

    def json(self):
        alts = []
        for name, t in self._variants().items():
            alts.append({"const": name})
            alts.append({"type": "object", "properties": {name: t.json()},
                         "required": [name], "additionalProperties": False})
        return {"anyOf": alts}


class OpenFields(Fields):
    """Like :class:`Fields` but values are free (a dataset's options are checked by it)."""


def _from_defaults(defaults: dict[str, Any]) -> Fields:
    fields: dict[str, tuple[Type, Any]] = {}
    for k, v in defaults.items():
        if isinstance(v, bool):
            t: Type = Bool()
        elif isinstance(v, int | float):
            t = Num()
        elif isinstance(v, str):
            t = Str()
        else:
            t = Any_()
        fields[k] = (t, v)
    return Fields(fields)


# Updater settings whose every value out of range poisons the parameters with NaN: eps 0
# divides 0 by 0 wherever a gradient is exactly 0 (the input weights of a character or
# token absent from a batch), a negative accumulator takes the square root of it, and
# b1 or b2 = 1 divides by the bias correction 1 - b^t = 0.
_UPDATER_RANGES = {"eps": Num(lo=0.0, lo_open=True), "initial_accumulator": Num(lo=0.0),
                   "b1": Num(lo=0.0, hi=1.0, hi_open=True),
                   "b2": Num(lo=0.0, hi=1.0, hi_open=True),
                   # lr -1 climbed the loss (as --lr refuses), momentum -5 or rmsprop's
                   # decay 2 diverged or gave NaN at the second step
                   "lr": Num(lo=0.0, lo_open=True),
                   "momentum": Num(lo=0.0, hi=1.0, hi_open=True),
                   "decay": Num(lo=0.0, hi=1.0, hi_open=True)}

# Schedule settings: every 0 divided by zero (a ZeroDivisionError traceback from the
# NumPy module, NaN from JAX's), a negative warmup made the learning rate negative
_SCHEDULE_RANGES = {"every": Num(lo=0.0, lo_open=True), "warmup": Num(lo=0.0),
                    "total": Num(lo=0.0, lo_open=True), "decay": Num(lo=0.0, lo_open=True),
                    "factor": Num(lo=0.0, lo_open=True), "min_lr": Num(lo=0.0)}


def _with_ranges(defaults_by_name: dict[str, dict], ranges: dict[str, Type]) -> dict[str, Type]:
    """Each name's option fields from its defaults, with the range checks of ``ranges``."""
    out: dict[str, Type] = {}
    for name, defaults in defaults_by_name.items():
        fields = _from_defaults(defaults)
        for k, t in ranges.items():
            if k in fields.fields:
                fields.fields[k] = (t, fields.fields[k][1])
        out[name] = fields
    return out


def _updaters() -> dict[str, Type]:
    from rnnc.backends.numpy.runtime_optim import UPDATER_DEFAULTS

    return _with_ranges(UPDATER_DEFAULTS, _UPDATER_RANGES)


def _schedules() -> dict[str, Type]:
    from rnnc.backends.numpy.runtime_optim import SCHEDULE_DEFAULTS

    return _with_ranges(SCHEDULE_DEFAULTS, _SCHEDULE_RANGES)


def _datasets() -> dict[str, Type]:
    from rnnc.data import dataset_names, dataset_options

    out: dict[str, Type] = {}
    for name in dataset_names():
        opts = dataset_options(name)
        out[name] = Fields({k: (Any_(), v) for k, v in opts.items()})
    return out


PROB = Num(lo=0.0, hi=0.999)

INPUT = Choice("input encoding", {
    "onehot": Fields({"vocab": (Num(integer=True, lo=1, auto=True), "auto")},
                     shorthand="vocab"),
    "embedding": Fields({"vocab": (Num(integer=True, lo=1, auto=True), "auto"),
                         "dim": (Num(integer=True, lo=1), REQUIRED)}),
    "dense": Fields({"features": (Num(integer=True, lo=1, auto=True), "auto"),
                     "normalize": (Enum(("none", "zscore")), "none")}, shorthand="features"),
})

HEAD = Choice("head", {
    "softmax": Fields({"at": (Enum(("per_step", "last")), "per_step"),
                       "classes": (Num(integer=True, lo=1, auto=True), "auto")},
                      shorthand="at"),
    "linear": Fields({"at": (Enum(("per_step", "last")), "per_step"),
                      "size": (Num(integer=True, lo=1, auto=True), "auto")}, shorthand="at"),
})

LAYER_OPTIONS: dict[str, tuple[Type, Any]] = {
    "hidden": (Num(integer=True, lo=1), REQUIRED),
    "name": (Str(), None),
    "dropout": (PROB, 0.0),
    "direction": (Enum(("forward", "backward", "bidirectional")), "forward"),
    "merge": (Enum(("concat", "sum")), "concat"),
    "residual": (Bool(), False),
    "bias": (Bool(), True),
    "init": (Any_(), None),
}
"""Options every layer takes, whatever its cell (the cell's own options come on top)."""

MODEL = Fields({
    "name": (Str(), "model"),
    "input": (INPUT, ("onehot", {"vocab": "auto"})),
    "layers": (Any_(), REQUIRED),  # cells are only known per spec: checked by lowering
    "stack": (Enum(("plain", "residual", "gated_feedback")), "plain"),
    "head": (HEAD, ("softmax", {"at": "per_step", "classes": "auto"})),
    "dtype": (Enum(("float32", "float64")), "float32"),
}, doc={
    "stack": "plain; residual (each layer adds its input); gated_feedback (Chung et al. 2015)",
})

INT_MAX = 2**31 - 1
"""The largest count a train block takes (epochs, batch, bptt k1/k2, ...): larger ones are
refused where the spec writes them, not left to overflow or run forever."""


def _count(lo: int = 1) -> Num:
    return Num(integer=True, lo=lo, hi=INT_MAX)


TRAIN = Fields({
    "data": (Choice("dataset", _datasets), REQUIRED),
    "bptt": (Fields({"k1": (_count(), REQUIRED),
                     "k2": (_count(), None)}), None),
    "updater": (Choice("updater", _updaters), ("adam", None)),
    "schedule": (Choice("learning-rate schedule", _schedules), None),
    "clip": (Fields({"norm": (Num(lo=0.0, lo_open=True), None),
                     "value": (Num(lo=0.0, lo_open=True), None)}), None),
    "l1": (Num(lo=0.0), 0.0),
    "l2": (Num(lo=0.0), 0.0),
    "dropout": (Fields({"input": (PROB, 0.0), "output": (PROB, 0.0), "layers": (PROB, 0.0)}),
                None),
    "epochs": (_count(), 10),
    "batch": (_count(), 32),
    "early_stop": (Fields({"metric": (Str(), "val_loss"),
                           "patience": (_count(), 3)}), None),
    "seed": (Num(integer=True, lo=0), 0),
    "reset": (Enum(("sequence", "document", "never")), "sequence"),
    "sample": (Fields({"every": (_count(0), 0),
                       "length": (_count(), 200),
                       "temperature": (Num(lo=0.0, lo_open=True), 1.0),
                       "prime": (Str(), "")}), None),
    "checkpoint": (Fields({"every": (_count(0), 0)}), None),
}, doc={
    "bptt": "truncated BPTT: every k1 steps, backpropagate the last k1 losses k2 steps "
            "(k2 >= k1, default k2 = k1); absent: full BPTT",
    "reset": "when the recurrent state goes back to zero: at each sequence, at document "
             "boundaries of a text stream, or never",
})


def json_schema() -> dict:
    """A JSON Schema (draft 2020-12) of the YAML spec form."""
    cell = {
        "type": "object",
        "properties": {
            "doc": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object"},
            "state": {"anyOf": [{"type": "array", "items": {"type": "string"}},
                                {"type": "object", "additionalProperties": {"type": "string"}}]},
            "params": {"type": "object", "additionalProperties": {"anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {
                    "shape": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "init": {"type": "string"}, "none": {"type": "boolean"}},
                 "additionalProperties": False}]}},
            "output": {"type": "string"},
            "equations": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "target: expression; `h'` is the next value of h"},
        },
        "required": ["equations"],
        "additionalProperties": False,
    }
    model = MODEL.json()
    layer_props = {k: dict(t.json()) for k, (t, _) in LAYER_OPTIONS.items()}
    model["properties"]["layers"] = {
        "type": "array",
        "items": {"type": "object", "minProperties": 1, "maxProperties": 1,
                  "additionalProperties": {"type": "object", "properties": layer_props}},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rnnc spec",
        "type": "object",
        "properties": {
            "cells": {"type": "object", "additionalProperties": cell},
            "model": model,
            "train": TRAIN.json(),
        },
        "required": ["model"],
        "additionalProperties": False,
    }
