"""The spec AST: what both front ends (YAML and the .rnn text language) produce.

Two kinds of node:

* **Expressions** (:class:`Expr` subclasses) for cell equations, parameter
  initialisers and compile-time conditions.
* **Configuration values** (:class:`CMap`, :class:`CList`, :class:`CScalar`)
  for the ``model`` and ``train`` blocks and cell options: a small, YAML-shaped
  tree whose every node keeps its source :class:`~rnnc.errors.Span`.

Spans never take part in ``==`` (``compare=False``), so the AST of
``spec.yaml`` equals the AST of the same spec written as ``spec.rnn``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rnnc.errors import Source, Span


def _span() -> Any:
    return field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Expr:
    pass


@dataclass(frozen=True)
class Num(Expr):
    value: float
    span: Span | None = _span()


@dataclass(frozen=True)
class Str(Expr):
    value: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Ref(Expr):
    """A name: an input, state, parameter, option, earlier equation, or function."""

    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Primed(Expr):
    """``h'``: the value state ``h`` takes at the next step (only as an equation target,
    or read after it is defined)."""

    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # + - * / @ == != < <= > >= and or
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Concat(Expr):
    items: tuple[Expr, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Slice(Expr):
    operand: Expr
    lo: Expr
    hi: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class If(Expr):
    """``if cond then a else b``, decided at compile time from the cell's options."""

    cond: Expr
    then: Expr
    other: Expr
    span: Span | None = _span()


# ------------------------------------------------------- configuration values


@dataclass(frozen=True)
class CScalar:
    value: Any  # int, float, str, bool or None
    span: Span | None = _span()


@dataclass(frozen=True)
class CList:
    items: tuple[Any, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class CMap:
    """An ordered mapping; ``keys`` hold the span of each key."""

    items: tuple[tuple[str, Any], ...]
    span: Span | None = _span()
    key_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.items:
            if k == key:
                return v
        return default

    def keys(self) -> list[str]:
        return [k for k, _ in self.items]

    def key_span(self, key: str) -> Span | None:
        for (k, _), s in zip(self.items, self.key_spans, strict=False):
            if k == key:
                return s
        return self.span


CNode = CScalar | CList | CMap


def plain(node: Any) -> Any:
    """A configuration tree as plain Python data (dicts, lists, scalars)."""
    if isinstance(node, CMap):
        return {k: plain(v) for k, v in node.items}
    if isinstance(node, CList):
        return [plain(v) for v in node.items]
    if isinstance(node, CScalar):
        return node.value
    return node


# ---------------------------------------------------------------------- cells


@dataclass(frozen=True)
class StateDecl:
    name: str
    size: Expr | None = None  # None: the layer's ``hidden``
    span: Span | None = _span()

    def __post_init__(self) -> None:
        # ``h[hidden]`` is ``h``: one AST for both, so fmt's YAML -> rnn -> YAML is a fixed
        # point (the YAML form writes ``h: hidden`` when another state has a size)
        if isinstance(self.size, Ref) and self.size.name == "hidden":
            object.__setattr__(self, "size", None)


@dataclass(frozen=True)
class ParamDecl:
    name: str
    shape: tuple[Expr, ...] | None = None  # None: inferred from use
    init: Expr | None = None  # None: the default for its role
    none: bool = False  # ``param b none``: the parameter is dropped (fixed at zero)
    span: Span | None = _span()


@dataclass(frozen=True)
class Equation:
    target: str
    primed: bool  # ``h' = ...``: defines the next value of state ``h``
    expr: Expr
    span: Span | None = _span()
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class CellDef:
    name: str
    inputs: tuple[str, ...]
    options: CMap  # option name -> default value
    states: tuple[StateDecl, ...]
    params: tuple[ParamDecl, ...]
    output: str | None
    equations: tuple[Equation, ...]
    span: Span | None = _span()
    doc: str = field(default="", compare=False)
    output_span: Span | None = _span()  # where `output NAME` is declared


# ----------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Spec:
    """A whole spec: custom cells, the model and (optionally) training."""

    cells: tuple[CellDef, ...]
    model: CMap | None
    train: CMap | None
    source: Source | None = field(default=None, compare=False, repr=False)
    # the comments of a .rnn file, (line, column, text), which `rnnc fmt` puts back
    comments: tuple[tuple[int, int, str], ...] = field(default=(), compare=False, repr=False)
    train_line: int | None = field(default=None, compare=False, repr=False)  # `train {`

    def cell(self, name: str) -> CellDef | None:
        for c in self.cells:
            if c.name == name:
                return c
        return None


# ---------------------------------------------------------------- nesting depth

MAX_DEPTH = 200
"""The deepest an expression or a configuration value may nest. Every stage after the
parser (checks, lowering, `fmt`'s printers, PyYAML's writer) walks the tree recursively,
a few Python frames a level: a call nested 350 deep overflowed Python's stack in them,
after the parser had taken it. No spec needs more than a few dozen levels; a sum of more
than MAX_DEPTH terms nests as deep (it is a chain of binary operations)."""

_NODES = (Expr, CScalar, CList, CMap, StateDecl, ParamDecl, Equation, CellDef, Spec)


def too_deep(root: Any) -> tuple[Any, Span | None] | None:
    """The first node of ``root`` nested deeper than :data:`MAX_DEPTH`, with the span of
    it or of its nearest ancestor that has one; None when none is. Iterative, so it works
    on a tree of any depth."""
    stack: list[tuple[Any, int, Span | None]] = [(root, 0, None)]
    while stack:
        node, depth, where = stack.pop()
        where = getattr(node, "span", None) or where
        if depth > MAX_DEPTH:
            return node, where
        if isinstance(node, CMap):
            kids: list[Any] = [v for _, v in node.items]
        elif isinstance(node, CList):
            kids = list(node.items)
        else:
            kids = []
            for name in node.__dataclass_fields__:
                value = getattr(node, name)
                for v in value if isinstance(value, tuple) else (value,):
                    if isinstance(v, _NODES):
                        kids.append(v)
        stack.extend((k, depth + 1, where) for k in kids)
    return None
