"""Front end for YAML specs: the same AST as the text language.

YAML is composed (never constructed) with PyYAML's safe loader, so every
node keeps its position and no tag can run code: anything but the standard
scalar, sequence and mapping tags is an error. Equations, initialisers and
sizes inside YAML strings are parsed with the text grammar's expression rule;
their spans are moved to point into the YAML file.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import yaml

from rnnc.errors import YAML_BREAK, RnncError, Source, Span, SpecError, SpecSyntaxError
from rnnc.spec import ast as A
from rnnc.spec.text import nesting_error, parse_expr


_SAFE_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:map",
}

_DECIMAL = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

def _as_written(text: str, value: int | float) -> bool:
    """Whether YAML's number ``value`` is what ``text`` says in decimal (``.inf`` and
    ``.nan`` count: they have an error of their own)."""
    if text.lower().lstrip("+-") in (".inf", ".nan"):
        return True
    if not _DECIMAL.match(text):
        return False
    if isinstance(value, int):
        return text.lstrip("+-").isdigit() and int(text) == value
    return float(text) == value


CELL_KEYS = ("doc", "inputs", "options", "state", "params", "output", "equations")
TOP_KEYS = ("cells", "model", "train")


class _Reader:
    def __init__(self, source: Source):
        self.source = source
        self.loader = yaml.SafeLoader("")

    def span(self, node: yaml.Node) -> Span:
        m, e = node.start_mark, node.end_mark
        end = e.column + 1 if e.line == m.line else None
        return Span(self.source, m.line + 1, m.column + 1, end)

    def check_tag(self, node: yaml.Node) -> None:
        if node.tag == "tag:yaml.org,2002:timestamp":  # `2001-01-01`: no tag written
            raise SpecError(f"'{node.value}' is a date or time to YAML, which a spec does not "
                            "take", self.span(node), "quote it for a string")
        if node.tag not in _SAFE_TAGS:
            raise SpecError(
                f"YAML tag '{node.tag}' is not allowed in a spec", self.span(node),
                "specs are plain data: remove the tag (rnnc loads YAML safely)",
            )

    # -- generic configuration values
    def value(self, node: yaml.Node) -> Any:
        self.check_tag(node)
        span = self.span(node)
        if isinstance(node, yaml.MappingNode):
            items, spans = [], []
            seen = set()
            for k, v in node.value:
                key = self.key(k)
                if key in seen:
                    raise SpecError(f"key '{key}' is given twice", self.span(k), "remove one")
                seen.add(key)
                items.append((key, self.value(v)))
                spans.append(self.span(k))
            return A.CMap(tuple(items), span, tuple(spans))
        if isinstance(node, yaml.SequenceNode):
            return A.CList(tuple(self.value(v) for v in node.value), span)
        value = self.loader.construct_object(node)
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and node.tag in _NUMBER_TAGS and not _as_written(node.value, value):
            # YAML 1.1 reads 0x10 as 16, 017 as 15 (octal), 1_000 as 1000 and 1:20 as 80
            # (base 60): in a spec such a number is far more likely a mistake than meant
            raise SpecError(f"'{node.value}' is not a decimal number (YAML reads it as "
                            f"{value!r})", span,
                            f"write {value!r} in decimal, or quote it for a string")
        if isinstance(value, str) and node.style is None and _DECIMAL.match(value):
            value = float(value)  # YAML 1.1 reads `2e-3`, `-.5` as strings; a spec means numbers
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"'{node.value}' is not a finite number", span,
                            "a spec's numbers must be finite: not .inf or .nan, and at most "
                            "about 1.8e308 in size")
        return A.CScalar(value, span)

    def key(self, node: yaml.Node) -> str:
        self.check_tag(node)
        if not isinstance(node, yaml.ScalarNode):
            raise SpecError("a mapping key must be a plain name", self.span(node))
        return str(node.value)

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, Span]]:
        self.check_tag(node)
        if not isinstance(node, yaml.MappingNode):
            raise SpecError(f"{what} must be a mapping", self.span(node),
                            "write it as `key: value` lines")
        out = []
        seen = set()
        for k, v in node.value:
            key = self.key(k)
            if key in seen:
                raise SpecError(f"key '{key}' is given twice", self.span(k), "remove one")
            seen.add(key)
            out.append((key, v, self.span(k)))
        return out

    def names(self, node: yaml.Node, what: str) -> list[tuple[str, Span]]:
        self.check_tag(node)
        if isinstance(node, yaml.ScalarNode):
            return [(str(node.value), self.span(node))]
        if not isinstance(node, yaml.SequenceNode):
            raise SpecError(f"{what} must be a list of names", self.span(node))
        out = []
        for v in node.value:
            self.check_tag(v)
            if not isinstance(v, yaml.ScalarNode):
                raise SpecError(f"{what} must be a list of names", self.span(v))
            out.append((str(v.value), self.span(v)))
        return out

    # -- embedded expressions
    def expr(self, node: yaml.Node) -> A.Expr:
        self.check_tag(node)
        if not isinstance(node, yaml.ScalarNode):
            raise SpecError("expected an expression (a string)", self.span(node))
        text = str(node.value)
        m = node.start_mark
        quoted = node.style in ("'", '"')
        dline, dcol = m.line, m.column + (1 if quoted else 0)
        inner = Source(self.source.name, text)
        try:
            expr = parse_expr(text, inner)
        except RnncError as err:
            raise type(err)(err.message, self._move(err.span, dline, dcol), err.hint) from None
        return _relocate(expr, lambda s: self._move(s, dline, dcol))

    def _move(self, span: Span | None, dline: int, dcol: int) -> Span | None:
        if span is None:
            return None
        moved = span.shifted(dline, dcol)
        return Span(self.source, moved.line, moved.column, moved.end_column)


def _relocate(node: Any, fn) -> Any:
    """Rebuild an expression tree with every span mapped through ``fn``."""
    if isinstance(node, tuple):
        return tuple(_relocate(n, fn) for n in node)
    if not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        v = getattr(node, f.name)
        if f.name == "span":
            changes["span"] = fn(v)
        elif isinstance(v, A.Expr | tuple):
            changes[f.name] = _relocate(v, fn)
    return dataclasses.replace(node, **changes)


def _unknown_key(key: str, span: Span, allowed, where: str) -> SpecError:
    from rnnc.errors import clip, did_you_mean

    return SpecError(f"unknown key '{clip(key)}' in {where}", span, did_you_mean(key, allowed))


def _cell(r: _Reader, name: str, node: yaml.Node, name_span: Span) -> A.CellDef:
    fields = r.mapping(node, f"cell '{name}'")
    inputs: tuple[str, ...] = ("x",)
    options = A.CMap((), name_span)
    states: list[A.StateDecl] = []
    params: list[A.ParamDecl] = []
    output = None
    output_span = None
    eqs: list[A.Equation] = []
    doc = ""
    for key, v, kspan in fields:
        if key == "inputs":
            inputs = tuple(n for n, _ in r.names(v, "inputs"))
        elif key == "doc":
            doc = str(r.loader.construct_object(v))
        elif key == "options":
            opt = r.value(v)
            if not isinstance(opt, A.CMap):
                raise SpecError("options must be a mapping of name: default", r.span(v))
            options = opt
        elif key == "state":
            if isinstance(v, yaml.MappingNode):
                for sname, sv, sspan in r.mapping(v, "state"):
                    states.append(A.StateDecl(sname, r.expr(sv), sspan))
            else:
                states.extend(A.StateDecl(n, None, s) for n, s in r.names(v, "state"))
        elif key == "params":
            for pname, pv, pspan in r.mapping(v, "params"):
                params.append(_param(r, pname, pv, pspan))
        elif key == "output":
            names = r.names(v, "output")
            if len(names) != 1:  # `output: [h, c]` took h and dropped the rest
                raise SpecError(f"a cell has one output, not {len(names)}", r.span(v),
                                "name one state or equation: output: h")
            output, output_span = names[0]
        elif key == "equations":
            for target, ev, espan in r.mapping(v, "equations"):
                primed = target.endswith("'")
                tname = target[:-1] if primed else target
                line = r.source.line(espan.line).strip()
                eqs.append(A.Equation(tname, primed, r.expr(ev), espan, line))
        else:
            raise _unknown_key(key, kspan, CELL_KEYS, f"cell '{name}'")
    return A.CellDef(name, inputs, options, tuple(states), tuple(params), output,
                     tuple(eqs), name_span, doc, output_span)


def _param(r: _Reader, name: str, node: yaml.Node, span: Span) -> A.ParamDecl:
    if isinstance(node, yaml.ScalarNode) and node.value in ("none", None, "null", ""):
        return A.ParamDecl(name, None, None, True, span)
    if isinstance(node, yaml.ScalarNode):
        return A.ParamDecl(name, None, r.expr(node), False, span)
    shape = init = None
    none = False
    for key, v, kspan in r.mapping(node, f"param '{name}'"):
        if key == "shape":
            r.check_tag(v)
            if not isinstance(v, yaml.SequenceNode):
                raise SpecError("shape must be a list of sizes", r.span(v))
            for d in v.value:
                if not isinstance(d, yaml.ScalarNode):
                    raise SpecError("a size in a shape must be a number or an expression",
                                    r.span(d), "e.g. shape: [hidden, X]")
            shape = tuple(r.expr(d) for d in v.value)
        elif key == "init":
            init = r.expr(v)
        elif key == "none":
            none = bool(r.loader.construct_object(v))
        else:
            raise _unknown_key(key, kspan, ("shape", "init", "none"), f"param '{name}'")
    return A.ParamDecl(name, shape, init, none, span)


def parse_yaml(text: str, name: str = "<spec>") -> A.Spec:
    """Parse a YAML spec into the AST."""
    try:
        spec = _parse_yaml(text, name)
    except RecursionError:  # PyYAML composes, and the reader walks, nodes recursively
        raise SpecSyntaxError("invalid YAML: lists or mappings are nested too deeply",
                              Span(Source(name, text, yaml=True), 1, 1),
                              "a spec nests a few levels; look for unclosed brackets"
                              ) from None
    deep = A.too_deep(spec)  # the equations were checked as they were parsed
    if deep is not None:
        raise nesting_error(*deep)
    return spec


MAX_VALUES = 100_000
"""The most values a spec may hold once YAML's aliases are expanded (a few hundred is a
large spec; nine lines of nested aliases make billions)."""


def _check_aliases(r: _Reader, root: yaml.Node) -> None:
    """SpecError where aliases make a value contain itself, or expand it to more than
    MAX_VALUES values: reading the spec would recurse forever or take hours."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order, iterative: the graph may be deep
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_VALUES:
                raise SpecError(f"YAML aliases expand this value to more than {MAX_VALUES:,} "
                                "values", r.span(node),
                                "a spec is small: write the values out, or use fewer aliases")
            continue
        if key in size:
            continue
        if key in open_:
            raise SpecError("a YAML alias makes this value contain itself", r.span(node),
                            "an alias (*name) must not refer to a mapping or list around it")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _parse_yaml(text: str, name: str) -> A.Spec:
    source = Source(name, text, yaml=True)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        span = Span(source, mark.line + 1, mark.column + 1) if mark else None
        raise SpecSyntaxError(f"invalid YAML: {err.problem or err.context}", span,
                              "check indentation, colons and quotes") from None
    except yaml.reader.ReaderError as err:  # a control character: no mark, a position
        before = YAML_BREAK.split(text[:err.position])
        ch = chr(err.character) if isinstance(err.character, int) else err.character
        raise SpecSyntaxError(f"invalid YAML: the character {ch!r} is not allowed",
                              Span(source, len(before), len(before[-1]) + 1),
                              "YAML allows no control characters other than tab and line "
                              "breaks; remove it") from None
    except yaml.YAMLError as err:
        raise SpecSyntaxError(f"invalid YAML: {err}", None) from None
    if root is None:
        raise SpecError("the spec is empty", Span(source, 1, 1), "a spec needs a `model:` block")
    r = _Reader(source)
    _check_aliases(r, root)
    cells: list[A.CellDef] = []
    model = train = None
    for key, v, kspan in r.mapping(root, "a spec"):
        if key == "cells":
            for cname, cv, cspan in r.mapping(v, "cells"):
                cells.append(_cell(r, cname, cv, cspan))
        elif key == "model":
            model = r.value(v)
            if not isinstance(model, A.CMap):
                raise SpecError("model must be a mapping", r.span(v))
        elif key == "train":
            train = r.value(v)
            if not isinstance(train, A.CMap):
                raise SpecError("train must be a mapping", r.span(v))
        else:
            raise _unknown_key(key, kspan, TOP_KEYS, "the spec")
    return A.Spec(tuple(cells), model, train, source)
