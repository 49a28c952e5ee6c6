"""Lower a checked spec AST to the IR: elaborate cells, infer shapes, wire layers.

Cells are *templates*: their options (``forget_bias``, ``peepholes``,
``gate_act`` ...) are compile-time constants. Lowering substitutes them,
decides every ``if ... then ... else`` and folds the constants that result,
so a parameter that only appears in a switched-off branch never exists.

Shapes are inferred by unification: every parameter dimension starts as an
unknown and is bound by use (``W @ x`` gives ``W`` the shape ``(?, |x|)``;
adding it to ``h`` binds ``?`` to ``|h|``). A mismatch names the equation and
both sizes; a dimension nothing binds asks for a declaration.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import keyword
import math
import re
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from rnnc.errors import (
    RnncError,
    ShapeError,
    Span,
    SpecError,
    clip,
    did_you_mean,
    in_syntax,
    shown,
)
from rnnc.ir.nodes import (
    Cell,
    Head,
    InputEncoding,
    Instr,
    Layer,
    Model,
    Param,
    Program,
    TrainPlan,
    Var,
)
from rnnc.ir.ops import ACTIVATIONS, attrs
from rnnc.spec import ast as A
from rnnc.spec.printer import expr_str, to_data
from rnnc.spec.schema import LAYER_OPTIONS, MODEL, TRAIN, Fields


INITIALISERS: dict[str, int] = {
    # name -> number of arguments
    "xavier_uniform": 0, "xavier_normal": 0, "glorot_uniform": 0, "glorot_normal": 0,
    "orthogonal": 0, "uniform": 2, "normal": 1, "zeros": 0, "ones": 0, "constant": 1,
}
_INIT_ALIASES = {"glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal"}

REDUCTIONS = ("sum", "mean")
"""Feature reductions: a per-row value of width 1 (see :meth:`_CellLowerer.reduction`)."""

FUNCTIONS = set(ACTIVATIONS) | {"clip"} | set(REDUCTIONS)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str, what: str, span: Span | None) -> None:
    """Names that become Python identifiers in generated code must be safe ones."""
    if not _IDENT.match(name) or keyword.iskeyword(name) or name.startswith("__"):
        raise SpecError(f"{what} '{name}' is not a valid name", span,
                        "use letters, digits and _, not starting with a digit or '__', "
                        "and not a Python keyword")


# ------------------------------------------------------------------ library


@cache
def library() -> dict[str, A.CellDef]:
    """The library cells shipped in ``specs/lib`` (themselves specs), by name."""
    from rnnc.spec.text import parse_text

    out: dict[str, A.CellDef] = {}
    lib = resources.files("rnnc.specs").joinpath("lib")
    for entry in sorted(lib.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".rnn"):
            text = entry.read_text(encoding="utf-8")
            doc = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
            for cell in parse_text(text, f"specs/lib/{entry.name}").cells:
                out[cell.name] = replace(cell, doc=doc)
    return out


# ------------------------------------------------------ compile-time values


def ceval(e: A.Expr, env: dict[str, Any], what: str = "this value") -> Any:
    """Evaluate an expression over compile-time options (numbers, strings, booleans)."""
    if isinstance(e, A.Num):
        return e.value
    if isinstance(e, A.Str):
        return e.value
    if isinstance(e, A.Ref):
        if e.name in ("true", "false"):
            return e.name == "true"
        if e.name in env:
            return env[e.name]

        close = difflib.get_close_matches(e.name, list(env), n=1)
        raise SpecError(f"'{e.name}' is not an option, so {what} cannot use it", e.span,
                        f"did you mean '{close[0]}'?" if close else
                        f"{what} is decided at compile time from numbers and the cell's options")
    if isinstance(e, A.Neg):
        return -_num(ceval(e.operand, env, what), e)
    if isinstance(e, A.Not):
        return not ceval(e.operand, env, what)
    if isinstance(e, A.If):
        return ceval(e.then if ceval(e.cond, env, what) else e.other, env, what)
    if isinstance(e, A.BinOp):
        a = ceval(e.left, env, what)
        if e.op == "and":
            return a and ceval(e.right, env, what)
        if e.op == "or":
            return a or ceval(e.right, env, what)
        b = ceval(e.right, env, what)
        if e.op == "==":
            return a == b
        if e.op == "!=":
            return a != b
        a, b = _num(a, e.left), _num(b, e.right)
        ops = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}
        if e.op in ops:
            return ops[e.op]
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "/":
            return a / b
    raise SpecError(f"{what} must be known at compile time", getattr(e, "span", None),
                    "it may use numbers and the cell's options only")


class _ReadEnv(dict):
    """The options (and ``hidden``, ``X``) of one cell lowering; every value read from it
    (``env[name]``, which :func:`ceval` and the lowerer use) is logged, so the options that
    the compiled cell never read are known (a layer option given but never read has no
    effect: `lstm(coupled: true, input_gate: false)`)."""

    def __init__(self, *args: Any, log: list[str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.log: list[str] = [] if log is None else log

    def __getitem__(self, key: str) -> Any:
        self.log.append(key)
        return super().__getitem__(key)


def _num(v: Any, e: A.Expr) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"expected a number here, got {v!r}", getattr(e, "span", None))
    return v


# ----------------------------------------------------------- shape types


@dataclass
class _Dims:
    """Union-find over dimension variables, each optionally bound to a size."""

    parent: list[int] = field(default_factory=list)
    value: list[int | None] = field(default_factory=list)

    def new(self, size: int | None = None) -> int:
        self.parent.append(len(self.parent))
        self.value.append(size)
        return len(self.parent) - 1

    def find(self, d: int) -> int:
        while self.parent[d] != d:
            self.parent[d] = self.parent[self.parent[d]]
            d = self.parent[d]
        return d

    def size(self, d: int) -> int | None:
        return self.value[self.find(d)]

    def unify(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        va, vb = self.value[ra], self.value[rb]
        if va is not None and vb is not None and va != vb:
            return False
        self.parent[rb] = ra
        self.value[ra] = va if va is not None else vb
        return True


@dataclass
class _Val:
    """A lowered operand: a compile-time scalar, or a named value with a shape type."""

    const: float | None = None
    name: str | None = None
    kind: str = "vec"  # vec | mat | pending (a parameter whose role is not known yet)
    dims: tuple[int, ...] = ()
    batched: bool = False
    text: str = ""  # source text, for error messages
    reduced: bool = False  # width 1 by a feature reduction: broadcast in element-wise ops


@dataclass
class _ParamInfo:
    name: str
    decl: A.ParamDecl | None
    kind: str = "pending"
    dims: tuple[int, ...] = ()
    span: Span | None = None


def _check_unique_declarations(cdef: A.CellDef) -> None:
    """Each input, state, option and declared parameter of a cell has its own name."""
    seen: dict[str, str] = {}
    decls = [(n, "input", cdef.span) for n in cdef.inputs]
    decls += [(k, "option", span) for (k, _), span in zip(
        cdef.options.items, cdef.options.key_spans + (None,) * len(cdef.options.items),
        strict=False)]
    decls += [(s.name, "state", s.span) for s in cdef.states]
    decls += [(p.name, "parameter", p.span) for p in cdef.params]
    for name, what, span in decls:
        if name in seen:
            first = seen[name]
            msg = (f"{what} '{name}' is declared twice" if first == what else
                   f"'{name}' is declared both as {_a(first)} and as {_a(what)}")
            raise SpecError(f"{msg} in cell '{cdef.name}'", span or cdef.span,
                            "give each its own name")
        seen[name] = what


def _refs(node: Any, out: set[str]) -> set[str]:
    """The names an expression (or a tuple of them) reads, in every branch."""
    if isinstance(node, A.Ref):
        out.add(node.name)
    if isinstance(node, A.Call):
        out.add(node.fn)  # an option that names an activation: gate_act(...)
    if isinstance(node, tuple | list):
        for item in node:
            _refs(item, out)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            if name != "span":
                _refs(getattr(node, name), out)
    return out


def _check_equations_used(cdef: A.CellDef) -> None:
    """Every intermediate equation is read by another equation (in some branch) or is the
    output. One that is not is a mistake: most often a misspelt name where it should have
    been read (`c' = fgt * c + ...` for `f`), which silently became a parameter."""
    used = _refs(tuple(eq.expr for eq in cdef.equations), set())
    for eq in cdef.equations:
        if not eq.primed and eq.target not in used and eq.target != cdef.output:
            raise SpecError(
                f"equation '{eq.target}' of cell '{cdef.name}' is never used: no state's "
                "next value, output or other equation reads it", eq.span,
                f"read {eq.target} where it belongs, or remove the equation (a misspelt "
                "name elsewhere is no error: a name that is nothing else is a parameter; "
                "see the parameter list of `rnnc check`)")


def _check_declarations_used(cdef: A.CellDef, init_overrides: dict[str, A.Expr]) -> None:
    """Every declared parameter is read by an equation, and every option by an equation,
    a declaration or the layer's init, in some branch. One that is not has no effect,
    which is a mistake: `param b_f init constant(forget_bias)` with `+ b_f` left out of
    the forget gate (the forget bias silently not applied), or an option the equations
    never read (setting it on the layer changes nothing)."""
    in_equations = _refs(tuple(eq.expr for eq in cdef.equations), set())
    for p in cdef.params:
        if p.name not in in_equations and not p.none:
            raise SpecError(
                f"parameter '{p.name}' of cell '{cdef.name}' is declared but no equation "
                "reads it", p.span, f"add {p.name} to the equation it belongs in (a bias: "
                f"`+ {p.name}`), or remove the declaration")
    read = _refs((cdef.equations, cdef.params, cdef.states, tuple(init_overrides.values())),
                 set())
    for (k, _), span in zip(cdef.options.items, cdef.options.key_spans
                            + (None,) * len(cdef.options.items), strict=False):
        if k not in read:
            raise SpecError(
                f"option '{k}' of cell '{cdef.name}' is declared but nothing in the cell "
                "reads it, so setting it has no effect", span or cdef.span,
                f"use {k} in an equation or a parameter's init (e.g. `param b_f init "
                f"constant({k})`), or remove the option")


def _a(what: str) -> str:
    return ("an " if what[0] in "aeiou" else "a ") + what


class _CellLowerer:
    def __init__(self, cdef: A.CellDef, env: dict[str, Any], input_sizes: dict[str, int],
                 hidden: int, layer: str, init_overrides: dict[str, A.Expr], bias: bool):
        self.cdef = cdef
        self.env = env
        self.layer = layer
        self.dims = _Dims()
        self.instrs: list[Instr] = []
        self.vals: dict[str, _Val] = {}
        self.params: dict[str, _ParamInfo] = {}
        self.init_overrides = init_overrides
        self.bias = bias
        self.n_tmp = 0
        self.eq: A.Equation | None = None
        self.primed: dict[str, _Val] = {}
        _check_unique_declarations(cdef)
        _check_equations_used(cdef)
        _check_declarations_used(cdef, init_overrides)
        reserved = set(cdef.inputs) | {s.name for s in cdef.states} | {
            e.target for e in cdef.equations}
        self.taken = set(reserved)
        self.inputs = []
        for n in cdef.inputs:
            check_identifier(n, "input", cdef.span)
            d = self.dims.new(input_sizes[n])
            self.vals[n] = _Val(name=n, dims=(d,), batched=True, text=n)
            self.inputs.append(Var(n, input_sizes[n]))
        self.states = []
        # conditions decided while lowering: (the options they read, the If, its value)
        self.decided: list[tuple[tuple[str, ...], A.If, bool]] = []
        self.replaced_inits: list[tuple[str, str]] = []  # (parameter, the layer's pattern)
        denv = _ReadEnv(env, log=getattr(env, "log", None))
        denv.update(hidden=hidden, X=input_sizes[cdef.inputs[0]])
        for s in cdef.states:
            check_identifier(s.name, "state", s.span)
            size = hidden if s.size is None else ceval(s.size, denv, f"the size of state {s.name}")
            if not isinstance(size, int | float) or isinstance(size, bool) or size < 1 or \
                    size != int(size):
                raise SpecError(f"state '{s.name}' has size {_whole(size)!r}", s.span,
                                "a size must be a positive integer")
            d = self.dims.new(int(size))
            self.vals[s.name] = _Val(name=s.name, dims=(d,), batched=True, text=s.name)
            self.states.append(Var(s.name, int(size)))
        self.denv = denv
        self.decls = {p.name: p for p in cdef.params}
        for p in cdef.params:
            check_identifier(p.name, "parameter", p.span)

    # -- errors
    def _where(self) -> str:
        if self.eq is None:
            return ""
        return f" in equation '{self.eq.text or self.eq.target}'"

    def err(self, msg: str, span: Span | None, hint: str | None = None) -> SpecError:
        return SpecError(msg + self._where(), span, hint)

    def shape_err(self, msg: str, span: Span | None, hint: str | None = None) -> ShapeError:
        return ShapeError(msg + self._where(), span, hint)

    def size_str(self, v: _Val) -> str:
        if v.kind == "mat":
            return f"({self._dstr(v.dims[0])}, {self._dstr(v.dims[1])})"
        return f"({self._dstr(v.dims[0])},)" if v.dims else "()"

    def _dstr(self, d: int) -> str:
        s = self.dims.size(d)
        return "?" if s is None else str(s)

    # -- instructions
    def fresh(self, base: str = "t") -> str:
        while True:
            self.n_tmp += 1
            name = f"{base}{self.n_tmp}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def emit(self, op: str, args: tuple[str, ...], out: _Val, span: Span | None,
             name: str | None = None, **kw: Any) -> _Val:
        name = name or self.fresh()
        size = self.dims.size(out.dims[0]) if out.dims else None
        self.instrs.append(Instr(name, op, args, (size or -1,), out.batched, attrs(**kw), span,
                                 out.text))
        out.name = name
        self.vals[name] = out
        if out.dims:
            self._pending_dims.append((name, out.dims[0]))
        return out

    _pending_dims: list[tuple[str, int]]
    _widths: dict[str, int]  # const (the n of a mean) -> the dimension it is the size of

    def materialize(self, v: _Val, span: Span | None) -> str:
        """A named value for a scalar constant (only needed where an op has no other name)."""
        if v.name is not None:
            return v.name
        out = _Val(batched=False, text=repr(v.const))
        return self.emit("const", (), out, span, value=float(v.const)).name

    # -- parameters
    def param(self, name: str, span: Span | None) -> _Val:
        info = self.params.get(name)
        if info is None:
            check_identifier(name, "parameter", span)
            decl = self.decls.get(name)
            info = _ParamInfo(name, decl, span=span)
            if decl is not None and decl.shape is not None:
                sizes = []
                for d in decl.shape:
                    v = ceval(d, self.denv, f"the shape of {name}")
                    if not isinstance(v, int | float) or v < 1 or v != int(v):
                        raise SpecError(f"parameter '{name}' has a dimension of {v!r}", decl.span,
                                        "a size must be a positive integer")
                    sizes.append(int(v))
                if len(sizes) not in (1, 2):
                    raise SpecError(f"parameter '{name}' must be a vector or a matrix",
                                    decl.span, "give one size (vector) or two (matrix)")
                info.kind = "vec" if len(sizes) == 1 else "mat"
                info.dims = tuple(self.dims.new(s) for s in sizes)
            self.params[name] = info
        return _Val(name=name, kind=info.kind, dims=info.dims, batched=False, text=name)

    def settle(self, v: _Val, kind: str, span: Span | None) -> _Val:
        """Fix the role of a parameter first seen without one."""
        if v.kind != "pending":
            if v.kind != kind and v.name in self.params:
                raise self.shape_err(
                    f"parameter '{v.name}' is used both as a matrix (with @) and element-wise",
                    span, "use a different name for each role")
            return v
        info = self.params[v.name]
        if info.kind != "pending":  # settled since v was read: `zx - mean(zx)` reads zx,
            # then mean(zx) settles it; new dimensions here would leave the mean's unbound
            return self.settle(replace(v, kind=info.kind, dims=info.dims), kind, span)
        info.kind = kind
        info.dims = (self.dims.new(), self.dims.new()) if kind == "mat" else (self.dims.new(),)
        return replace(v, kind=kind, dims=info.dims)

    # -- expressions
    def lower(self, e: A.Expr) -> _Val:
        if isinstance(e, A.Num):
            return _Val(const=e.value, text=expr_str(e))
        if isinstance(e, A.Str):
            raise self.err("a string is not a value in an equation", e.span)
        if isinstance(e, A.Primed):
            if e.name not in self.primed:
                if e.name in self.vals and e.name in {s.name for s in self.states}:
                    raise self.err(f"{e.name}' is used before it is defined", e.span,
                                   f"move the equation {e.name}' = ... above this one")
                raise self.err(f"'{e.name}' is not a state variable, so {e.name}' means nothing",
                               e.span)
            return self.primed[e.name]
        if isinstance(e, A.Ref):
            return self.ref(e)
        if isinstance(e, A.If):
            log = getattr(self.env, "log", [])
            start = len(log)
            cond = ceval(e.cond, self.env, "a condition")
            self.decided.append((tuple(dict.fromkeys(log[start:])), e, bool(cond)))
            return self.lower(e.then if cond else e.other)
        if isinstance(e, A.Neg):
            v = self.lower(e.operand)
            if v.const is not None:
                return _Val(const=-v.const, text=expr_str(e))
            v = self.settle(v, "vec", e.span)
            return self.emit("neg", (v.name,), replace(v, text=expr_str(e)), e.span)
        if isinstance(e, A.Not):
            raise self.err("'not' belongs in an if-condition", e.span)
        if isinstance(e, A.BinOp):
            return self.binop(e)
        if isinstance(e, A.Call):
            return self.call(e)
        if isinstance(e, A.Concat):
            parts = [self.settle(self.lower(x), "vec", x.span) for x in e.items]
            sizes = []
            for p, x in zip(parts, e.items, strict=True):
                if p.const is not None:
                    raise self.err("cannot concatenate a constant", x.span)
                s = self.dims.size(p.dims[0])
                if s is None:
                    raise self.shape_err(f"the size of '{p.text}' is not known here", x.span,
                                         "declare the shape of the parameter it uses")
                sizes.append(s)
            out = _Val(dims=(self.dims.new(sum(sizes)),), batched=any(p.batched for p in parts),
                       text=expr_str(e))
            return self.emit("concat", tuple(p.name for p in parts), out, e.span)
        if isinstance(e, A.Slice):
            v = self.settle(self.lower(e.operand), "vec", e.span)
            lo = ceval(e.lo, self.denv, "a slice bound")
            hi = ceval(e.hi, self.denv, "a slice bound")
            n = self.dims.size(v.dims[0]) if v.dims else None
            if v.const is not None or n is None:
                raise self.shape_err(f"cannot slice '{v.text}' (its size is not known)", e.span)
            if not (isinstance(lo, int | float) and isinstance(hi, int | float)
                    and lo == int(lo) and hi == int(hi)):
                raise self.shape_err(f"slice [{_whole(lo)}:{_whole(hi)}]: its bounds must be "
                                     "integers", e.span, f"bounds must satisfy 0 <= lo < hi <= {n}")
            if not 0 <= lo < hi <= n:
                raise self.shape_err(f"slice [{_whole(lo)}:{_whole(hi)}] is out of range for size "
                                     f"{n}", e.span, f"bounds must satisfy 0 <= lo < hi <= {n}")
            out = _Val(dims=(self.dims.new(int(hi - lo)),), batched=v.batched, text=expr_str(e))
            return self.emit("slice", (v.name,), out, e.span, lo=int(lo), hi=int(hi))
        raise self.err(f"unsupported expression {expr_str(e)}", getattr(e, "span", None))

    def ref(self, e: A.Ref) -> _Val:
        n = e.name
        if n in self.vals and (n in self.cdef.inputs or n in {s.name for s in self.states}):
            return replace(self.vals[n], text=n)
        if n in self.aliases:
            return self.aliases[n]
        if n in self.env:
            v = self.env[n]
            if isinstance(v, bool):
                return _Val(const=float(v), text=n)
            if isinstance(v, int | float):
                return _Val(const=float(v), text=n)
            raise self.err(f"option '{n}' is {v!r}, not a number", e.span)
        if n in {eq.target for eq in self.cdef.equations if not eq.primed}:
            raise self.err(f"'{n}' is used before it is defined", e.span,
                           f"move the equation for {n} above this one")
        if n in FUNCTIONS:
            raise self.err(f"'{n}' is a function: call it as {n}(...)", e.span)
        decl = self.decls.get(n)
        if decl is not None and decl.none or (not self.bias and _is_bias(n)):
            return _Val(const=0.0, text=n)
        return self.param(n, e.span)

    aliases: dict[str, _Val]

    def binop(self, e: A.BinOp) -> _Val:
        if e.op in ("and", "or", "==", "!=", "<", "<=", ">", ">="):
            raise self.err(f"'{e.op}' belongs in an if-condition", e.span,
                           "conditions are decided at compile time from the cell's options")
        a, b = self.lower(e.left), self.lower(e.right)
        text = expr_str(e)
        if e.op == "@":
            return self.matmul(a, b, e, text)
        if a.const is not None and b.const is not None:
            r = {"+": a.const + b.const, "-": a.const - b.const, "*": a.const * b.const,
                 "/": a.const / b.const if b.const != 0 else None}[e.op]
            if r is None:
                raise self.err("division by zero", e.span)
            return _Val(const=self._finite(r, text, e.span), text=text)
        if e.op == "/" and b.const == 0:  # a literal 0, a zero option, a switched-off term
            raise self.err("division by zero", e.span,
                           f"'{b.text}' is 0 here; divide by something that is not")
        # algebraic identities that make switched-off options vanish
        if e.op == "+" and a.const == 0:
            return b
        if e.op in "+-" and b.const == 0:
            return a
        if e.op == "*" and (a.const == 0 or b.const == 0):
            return _Val(const=0.0, text=text)
        if e.op == "*" and a.const == 1:
            return b
        if e.op in "*/" and b.const == 1:
            return a
        if e.op == "-" and a.const == 0:
            b = self.settle(b, "vec", e.span)
            return self.emit("neg", (b.name,), replace(b, text=text), e.span)
        if a.kind == "mat" or b.kind == "mat":
            m = a if a.kind == "mat" else b
            raise self.shape_err(f"matrix '{m.text}' is used element-wise", e.span,
                                 f"write {m.text} @ v to multiply a vector by it")
        if a.const is None:
            a = self.settle(a, "vec", e.span)
        if b.const is None:
            b = self.settle(b, "vec", e.span)
        # a value of width 1 (a reduction, or a value whose width is known to be 1 here: a
        # state or parameter of size 1, a slice v[i:i+1], an input of one feature) with
        # anything else of width 1 stays one; with a value of another width, or of a width
        # not known yet, it is broadcast to that value's width by an explicit expand (one
        # that turns out to expand to width 1 is dropped in finish)
        a_one, b_one = self._one(a), self._one(b)
        # the result is a reduction (no width of its own) only if every operand is one: a
        # width-1 value known as such (s of `state s[1]`) in it pins a width nothing binds
        # to 1 wherever it meets one, so `(s * k) * p` and `s * (k * p)` (and `(s * mean(h))
        # * p`, `s * (mean(h) * p)`) give p one width (it was an unbound shape in the first)
        reduced = all(v.reduced for v in (a, b) if v.const is None)
        full = b if a_one else a
        if a.const is None and b.const is None and a_one != b_one and \
                self.dims.size(full.dims[0]) != 1:
            if a_one:
                a = self.expand(a, b, e.span)
            else:
                b = self.expand(b, a, e.span)
        elif a.const is None and b.const is None:
            if not self.dims.unify(a.dims[0], b.dims[0]):
                raise self.shape_err(
                    f"'{a.text}' has shape {self.size_str(a)} but '{b.text}' has shape "
                    f"{self.size_str(b)}", e.span,
                    "element-wise operands must have the same size")
        vec = a if a.const is None else b
        batched = (a.const is None and a.batched) or (b.const is None and b.batched)
        out = _Val(dims=vec.dims, batched=batched, text=text, reduced=reduced)
        names = (self.materialize(a, e.span), self.materialize(b, e.span))
        op = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[e.op]
        return self.emit(op, names, out, e.span)

    def _one(self, v: _Val) -> bool:
        """Whether ``v`` is a value of width 1 (broadcast in element-wise ops)."""
        return v.const is None and (v.reduced or self.dims.size(v.dims[0]) == 1)

    def expand(self, r: _Val, full: _Val, span: Span | None) -> _Val:
        """The width-1 value ``r`` broadcast to the width of ``full`` (its ``n`` is set in
        :meth:`finish` when that width is not known yet)."""
        out = _Val(dims=full.dims, batched=r.batched, text=r.text)
        if not r.reduced:
            self._unbound_one.append(full.dims[0])
        return self.emit("expand", (r.name,), out, span, n=self.dims.size(full.dims[0]))

    def reduction(self, fn: str, e: A.Call) -> _Val:
        """``sum(v)`` / ``mean(v)`` over the features of ``v``: ``sumf`` (and a division by
        the width), a value of width 1 that element-wise ops broadcast with an expand."""
        if len(e.args) != 1:
            raise self.err(f"{fn} takes one argument: {fn}(v)", e.span)
        v = self.lower(e.args[0])
        text = expr_str(e)
        if v.const is not None:
            raise self.err(f"{fn}({v.text}) reduces a constant, which has no features",
                           e.span, f"{fn} takes a vector: a value computed from an input, a "
                           "state or a parameter")
        if v.kind == "mat":
            raise self.shape_err(f"matrix '{v.text}' passed to {fn}", e.span,
                                 f"{fn} reduces a vector over its features; write "
                                 f"{fn}({v.text} @ v)")
        v = self.settle(v, "vec", e.span)
        out = _Val(dims=(self.dims.new(1),), batched=v.batched, text=f"sum({v.text})",
                   reduced=True)
        s = self.emit("sumf", (v.name,), out, span=e.span)
        if fn == "sum":
            s.text = text
            return s
        n = self.dims.size(v.dims[0])
        c = self.emit("const", (), _Val(batched=False, text=f"|{v.text}|"), e.span,
                      value=float(n) if n is not None else None)
        if n is None:
            self._widths[c.name] = v.dims[0]  # the width is set in finish
        out = _Val(dims=(self.dims.new(1),), batched=v.batched, text=text, reduced=True)
        return self.emit("div", (s.name, c.name), out, e.span)

    def _finite(self, value: float, text: str, span) -> float:
        """A constant folded at compile time, refused when it overflows (inf or nan)."""
        if not math.isfinite(value):
            raise self.err(f"the constant '{text}' overflows: it is {value} in float64",
                           span, "use smaller constants")
        return value

    def matmul(self, a: _Val, b: _Val, e: A.BinOp, text: str) -> _Val:
        if a.const is not None or a.name not in self.params:
            decl = self.decls.get(a.text)
            if decl is not None and decl.none:
                n = decl.name
                how = in_syntax(decl.span, f"`param {n} none`", "with no value (none)")
                raise self.shape_err(
                    f"'{n}' is declared {how}, which drops it (fixed at zero), so it "
                    f"cannot be the matrix of '{text}'", e.span, in_syntax(
                        decl.span, f"declare it `param {n}` (its shape is inferred from "
                        f"'{text}') or `param {n}[ROWS, COLS]`, or remove the term",
                        f"remove `{n}:` from params (its shape is inferred from '{text}') "
                        f"or write `{n}: {{shape: [ROWS, COLS]}}` (an empty value or none "
                        "drops it), or remove the term"))
            if a.const is not None and not self.bias and _is_bias(a.text):
                raise self.shape_err(
                    f"'{a.text}' is dropped as a bias (the layer has `bias: false`), so it "
                    f"cannot be the matrix of '{text}'", e.span,
                    "name matrices other than b or b_*")
            left = e.left
            if isinstance(left, A.BinOp) and left.op in ("*", "/") or isinstance(left, A.Neg):
                # `h * U @ h` is `(h * U) @ h`, as in Python: almost surely h * (U @ h)
                meant = (A.Neg(A.BinOp("@", left.operand, e.right, e.span), left.span)
                         if isinstance(left, A.Neg) else
                         A.BinOp(left.op, left.left, A.BinOp("@", left.right, e.right, e.span),
                                 left.span))
                why = ("a unary minus binds tighter than '@'" if isinstance(left, A.Neg) else
                       f"'{left.op}' and '@' bind equally tight and group from the left")
                raise self.shape_err(
                    f"'{text}' reads as '({a.text}) @ {expr_str(e.right, 7)}' ({why}, as in "
                    "Python), and the left side of '@' must be a parameter matrix", e.span,
                    f"add parentheses: {expr_str(meant)}")
            raise self.shape_err(f"the left side of '@' must be a parameter matrix, not "
                                 f"'{a.text}'", e.span,
                                 "write W @ v with W a parameter (a name that is no state, "
                                 "input or value; its shape is inferred from its use)")
        a = self.settle(a, "mat", e.span)
        if b.const is not None:
            return _Val(const=0.0, text=text) if b.const == 0 else self._bad_matmul(e)
        b = self.settle(b, "vec", e.span)
        if not self.dims.unify(a.dims[1], b.dims[0]):
            raise self.shape_err(
                f"'{a.text} @ {b.text}' multiplies a matrix of shape {self.size_str(a)} by "
                f"'{b.text}' of shape {self.size_str(b)}", e.span,
                f"{a.text} needs {self._dstr(b.dims[0])} columns")
        out = _Val(dims=(a.dims[0],), batched=b.batched, text=text)
        return self.emit("matmul", (a.name, b.name), out, e.span)

    def _bad_matmul(self, e: A.BinOp) -> _Val:
        raise self.shape_err("cannot multiply a matrix by a constant", e.span)

    def call(self, e: A.Call) -> _Val:
        fn = e.fn
        if fn in self.env and isinstance(self.env[fn], str):
            fn = self.env[fn]  # an option naming an activation: gate_act(...)
            if fn not in FUNCTIONS:
                raise self.err(f"option '{e.fn}' is '{fn}', which is not an activation",
                               e.span, did_you_mean(fn, ACTIVATIONS))
        if fn not in FUNCTIONS:
            raise self.err(f"unknown function '{fn}'", e.span,
                           did_you_mean(fn, sorted(FUNCTIONS)))
        if fn in REDUCTIONS:
            return self.reduction(fn, e)
        if fn == "clip":
            if len(e.args) != 3:
                raise self.err("clip takes 3 arguments: clip(v, lo, hi)", e.span)
            lo = ceval(e.args[1], self.denv, "a clip bound")
            hi = ceval(e.args[2], self.denv, "a clip bound")
            if _num(lo, e.args[1]) > _num(hi, e.args[2]):
                raise self.err(f"clip's lower bound {lo} is above its upper bound {hi}", e.span,
                               "write clip(v, lo, hi) with lo <= hi")
            v = self.lower(e.args[0])
            if v.const is not None:
                return _Val(const=float(np.clip(v.const, lo, hi)), text=expr_str(e))
            v = self.settle(v, "vec", e.span)
            return self.emit("clip", (v.name,), replace(v, text=expr_str(e)), e.span,
                             lo=float(lo), hi=float(hi))
        if len(e.args) != 1:
            raise self.err(f"{fn} takes one argument", e.span)
        v = self.lower(e.args[0])
        if v.const is not None:
            from rnnc.ir.ops import ACT_FORWARD

            with np.errstate(all="ignore"):
                val = eval(ACT_FORWARD[fn].format(xp="np", a=repr(float(v.const))), {"np": np})
            return _Val(const=self._finite(float(val), expr_str(e), e.span), text=expr_str(e))
        if fn == "identity":
            return v
        if v.kind == "mat":
            raise self.shape_err(f"matrix '{v.text}' passed to {fn}", e.span)
        v = self.settle(v, "vec", e.span)
        return self.emit("act", (v.name,), replace(v, text=expr_str(e)), e.span, fn=fn)

    # -- the cell
    def run(self) -> Cell:
        self._pending_dims = []
        self._widths = {}
        self._unbound_one: list[int] = []
        self.aliases = {}
        defined: set[str] = set()
        state_names = [s.name for s in self.states]
        for eq in self.cdef.equations:
            self.eq = eq
            if eq.primed and eq.target not in state_names:
                close = difflib.get_close_matches(eq.target, state_names, n=1)
                raise self.err(f"'{eq.target}' is not a state variable", eq.span,
                               f"did you mean {close[0]}'?" if close else
                               f"declare it: state {eq.target}")
            key = eq.target + ("'" if eq.primed else "")
            if key in defined:
                raise self.err(f"'{key}' is defined twice", eq.span)
            if not eq.primed:
                check_identifier(eq.target, "equation target", eq.span)
                if eq.target in self.cdef.inputs or eq.target in state_names:
                    raise self.err(f"'{eq.target}' is an input or state; assign {eq.target}' "
                                   f"for the next step", eq.span)
                # an equation named like an option or a declared parameter would hide it:
                # the option's value (or the layer's setting of it) would be ignored
                what = ("an option" if self.cdef.options.get(eq.target) is not None else
                        "a parameter" if any(p.name == eq.target for p in self.cdef.params)
                        else None)
                if what is not None:
                    raise self.err(f"'{eq.target}' is {what} of cell '{self.cdef.name}'; an "
                                   "equation cannot also define it", eq.span,
                                   "give the equation a name of its own")
            defined.add(key)
            v = self.lower(eq.expr)
            if eq.primed:
                sv = self.vals[eq.target]
                if v.const is not None:
                    raise self.err(f"{eq.target}' is a constant", eq.span,
                                   "a state's next value must depend on the step")
                v = self.settle(v, "vec", eq.span)
                if not self.dims.unify(sv.dims[0], v.dims[0]):
                    raise self.shape_err(
                        f"{eq.target}' has shape {self.size_str(v)} but state {eq.target} is "
                        f"{self.size_str(sv)}", eq.span,
                        f"the new value must have the state's size ({self.size_str(sv)})")
                if not v.batched:
                    raise self.err(f"{eq.target}' depends only on parameters", eq.span)
                self.primed[eq.target] = v
            else:
                self.aliases[eq.target] = v
            if v.name is not None and v.name.startswith("t") and v.name[1:].isdigit():
                # give the equation's own name to the instruction that computes it
                self._rename(v.name, eq.target if not eq.primed else
                             self._next_name(eq.target))
        self.eq = None
        for s in state_names:
            if s not in self.primed:
                raise SpecError(f"state '{s}' has no equation {s}' = ...", self.cdef.span,
                                f"add an equation for {s}' (its value at the next step)")
        out_name = self.cdef.output or state_names[0] if state_names else None
        if not state_names:
            raise SpecError(f"cell '{self.cdef.name}' has no state", self.cdef.span,
                            "declare one: state h")
        if out_name in self.primed:
            out = self.primed[out_name]
        elif out_name in self.aliases:
            out = self.aliases[out_name]
        else:
            raise SpecError(f"output '{out_name}' is not a state or an equation",
                            self.cdef.output_span or self.cdef.span,
                            did_you_mean(out_name, list(self.aliases) + state_names))
        if out.const is not None or not out.batched:
            raise SpecError(f"output '{out_name}' does not depend on the step",
                            self.cdef.output_span or self.cdef.span,
                            "the output must be computed from the input or the state")
        return self.finish(out.name, {s: self.primed[s].name for s in state_names})

    def _next_name(self, state: str) -> str:
        name = f"{state}_next"
        while name in self.taken:
            name += "_"
        return name

    def _rename(self, old: str, new: str) -> None:
        if new in self.vals and new != old:
            return  # keep the temporary name: the target names an earlier value
        self.taken.add(new)
        self.instrs = [replace(i, name=new if i.name == old else i.name,
                               args=tuple(new if a == old else a for a in i.args))
                       for i in self.instrs]
        v = self.vals.pop(old)
        v.name = new
        self.vals[new] = v
        self._pending_dims = [(new if n == old else n, d) for n, d in self._pending_dims]
        if old in self._widths:
            self._widths[new] = self._widths.pop(old)

    def _typo_hint(self, used: set[str]) -> str | None:
        """A hint for a misspelt name, which became an undeclared parameter of unknown shape
        (`U @ hh` for `U @ h`)."""
        known = list(self.cdef.inputs) + [s.name for s in self.cdef.states] + [
            e.target for e in self.cdef.equations] + [k for k, _ in self.cdef.options.items]
        for pname, info in self.params.items():
            if pname in used and pname not in self.decls and any(
                    self.dims.size(d) is None for d in info.dims):
                close = difflib.get_close_matches(pname, known, n=1, cutoff=0.6)
                if close:
                    return (f"'{pname}' is not an input, state, option or earlier equation, so "
                            f"it is read as a parameter: did you mean '{close[0]}'?")
        return None

    def finish(self, output: str, next_state: dict[str, str]) -> Cell:
        # a value of width 1 (not a reduction) met one whose width nothing bound: the two
        # are one width, as if they had been unified where they met
        for d in self._unbound_one:
            if self.dims.size(d) is None:
                self.dims.unify(d, self.dims.new(1))
        # resolve every dimension now that all equations have been seen
        sizes = {n: self.dims.size(d) for n, d in self._pending_dims}
        sizes.update({i.name: None for i in self.instrs if i.op == "const"})
        params = []
        # an expand to width 1 (its value met another of width 1 not known when it was
        # lowered) is no broadcast: its users read the width-1 value itself
        same = {i.name: i.args[0] for i in self.instrs if i.op == "expand"
                and sizes[i.name] == 1}
        body = [replace(i, args=tuple(same.get(a, a) for a in i.args))
                for i in self.instrs if i.name not in same]
        live = _live(body, set(next_state.values()) | {output})
        instrs = [replace(i, shape=(sizes[i.name],) if i.op != "const" else ())
                  for i in body if i.name in live]
        used = {a for i in instrs for a in i.args}
        for name, info in self.params.items():
            if name not in used:
                continue
            shape = tuple(self.dims.size(d) for d in info.dims)
            if info.kind == "pending" or any(s is None for s in shape):
                raise ShapeError(
                    f"cannot infer the shape of parameter '{name}' in cell '{self.cdef.name}'",
                    info.span, self._typo_hint(used) or f"declare it: param {name}[rows, cols]")
            params.append(self._param(name, info, shape))
        for pattern, expr in self.init_overrides.items():
            if not any(re.fullmatch(pattern.replace("*", ".*"), p.name) for p in params):
                names = [p.name for p in params]
                raise SpecError(
                    f"init names '{pattern}', which matches no parameter of layer "
                    f"'{self.layer}' (cell '{self.cdef.name}')", getattr(expr, "span", None),
                    did_you_mean(pattern, names) or "its parameters: " + ", ".join(names))
        for i in instrs:
            if any(s is None for s in i.shape):
                raise ShapeError(f"cannot infer the size of '{i.comment}'", i.span)
        instrs = [self._settle_width(i, sizes) for i in instrs]
        return Cell(
            name=self.cdef.name,
            inputs=tuple(self.inputs),
            states=tuple(self.states),
            params=tuple(params),
            invariant=(), hoisted=(), body=tuple(instrs),
            next_state=tuple(next_state.items()),
            output=output,
            equations=tuple(self._equation_text(eq) for eq in self.cdef.equations),
        )

    def _settle_width(self, ins: Instr, sizes: dict[str, int | None]) -> Instr:
        """An expand's ``n`` and a mean's divisor, where the width was not known yet when
        the equation was lowered (``mean(W @ x)`` before anything binds W's rows)."""
        if ins.op == "expand" and ins.attr("n") is None and sizes[ins.name] is not None:
            return replace(ins, attrs=attrs(n=sizes[ins.name]))
        if ins.name in self._widths:
            # known by now: the reduced value's own size was checked with every other
            n = self.dims.size(self._widths[ins.name])
            assert n is not None, ins
            return replace(ins, attrs=attrs(value=float(n)))
        return ins

    def _equation_text(self, eq: A.Equation) -> str:
        return f"{eq.target}{chr(39) if eq.primed else ''} = {expr_str(eq.expr)}"

    def _param(self, name: str, info: _ParamInfo, shape: tuple[int, ...]) -> Param:
        init_expr = None
        by = None
        for pattern, expr in self.init_overrides.items():
            if re.fullmatch(pattern.replace("*", ".*"), name):
                init_expr, by = expr, pattern
        if by is not None and info.decl is not None and info.decl.init is not None:
            self.replaced_inits.append((name, by))
        if init_expr is None and info.decl is not None:
            init_expr = info.decl.init
        fan = (shape[1], shape[0]) if len(shape) == 2 else None
        if init_expr is None:
            init = ("xavier_uniform", ()) if len(shape) == 2 else ("zeros", ())
        else:
            init = _initialiser(init_expr, self.denv, name)
            if init[0] in ("xavier_uniform", "xavier_normal", "orthogonal") and len(shape) != 2:
                raise SpecError(f"{init[0]} initialises a matrix, but '{name}' is a vector",
                                getattr(init_expr, "span", None), "use zeros, constant(v), "
                                "uniform(a, b) or normal(std)")
        return Param(name, shape, init, fan)


def _is_bias(name: str) -> bool:
    return name == "b" or name.startswith("b_")


def _init_overrides(init: dict, node: Any, span: Span | None) -> dict[str, A.Expr]:
    """A layer's `init` map as parsed initialisers, each located at its value in the spec
    (its key's place where the value has none), so that an unknown initialiser or a bad
    argument is reported there and not inside the re-parsed text."""
    from rnnc.spec.text import parse_expr
    from rnnc.spec.yaml_front import _relocate

    places = {}
    if isinstance(node, A.CMap):
        for (k, v), ks in zip(node.items, node.key_spans or [None] * len(node.items),
                              strict=False):
            places[k] = getattr(v, "span", None) or ks
    out = {}
    for k, v in init.items():
        at = places.get(k) or span
        try:
            expr = parse_expr(_initialiser_text(v))
        except RnncError as err:
            raise type(err)(f"in init of '{k}': {err.message}", at, err.hint) from None
        out[k] = expr if at is None else _relocate(expr, lambda _s, at=at: at)
    return out


def _initialiser_text(v: Any) -> str:
    """A layer init value as initialiser text: "orthogonal", "uniform(-0.1, 0.1)" (YAML
    strings), or the text language's call form uniform(-0.1, 0.1) ({"uniform": [-0.1, 0.1]})."""
    if isinstance(v, dict) and len(v) == 1:
        (name, args), = v.items()
        args = args if isinstance(args, list) else [args]
        return f"{name}({', '.join(str(a) for a in args)})"
    return str(v)


def _initialiser(e: A.Expr, env: dict[str, Any], pname: str) -> tuple[str, tuple[float, ...]]:
    if isinstance(e, A.Ref):
        name, args = e.name, ()
    elif isinstance(e, A.Call):
        name, args = e.fn, e.args
    else:
        raise SpecError(f"the initialiser of '{pname}' must be a name or a call", e.span,
                        "e.g. xavier_uniform, orthogonal, constant(1.0), uniform(-0.1, 0.1)")
    if name not in INITIALISERS:
        raise SpecError(f"unknown initialiser '{clip(name)}'", e.span,
                        did_you_mean(name, INITIALISERS))
    if len(args) != INITIALISERS[name]:
        raise SpecError(f"{name} takes {INITIALISERS[name]} argument(s), not {len(args)}",
                        e.span)
    values = tuple(float(_num(ceval(a, env, "an initialiser argument"), a)) for a in args)
    # what init_params would refuse at run time (NumPy: 'high - low < 0', 'scale < 0')
    if name == "uniform" and values[0] > values[1]:
        raise SpecError(f"uniform({_fmt(values[0])}, {_fmt(values[1])}) of '{pname}' has its "
                        "low bound above its high bound", e.span, "write uniform(low, high)")
    if name == "normal" and values[0] < 0:
        raise SpecError(f"normal({_fmt(values[0])}) of '{pname}' has a negative standard "
                        "deviation", e.span, "normal(std) takes std >= 0")
    return (_INIT_ALIASES.get(name, name), values)


def _compared_strings(cdef: A.CellDef) -> dict[str, set[str]]:
    """{option: the string literals the cell's conditions compare it with (== or !=)}."""
    found: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, A.BinOp) and node.op in ("==", "!="):
            for a, b in ((node.left, node.right), (node.right, node.left)):
                if isinstance(a, A.Ref) and isinstance(b, A.Str):
                    found.setdefault(a.name, set()).add(b.value)
        if isinstance(node, tuple | list):
            for item in node:
                walk(item)
        elif hasattr(node, "__dataclass_fields__"):
            for name in node.__dataclass_fields__:
                if name != "span":
                    walk(getattr(node, name))

    walk(cdef)
    return found


def _whole(v: Any) -> Any:
    """A number computed in floats shown as the spec wrote it: 3.0 as 3, 2.5 as 2.5."""
    return int(v) if isinstance(v, float) and math.isfinite(v) and v.is_integer() else v


def _fmt(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)


def _live(instrs: list[Instr], roots: set[str]) -> set[str]:
    live = set(roots)
    for ins in reversed(instrs):
        if ins.name in live:
            live.update(ins.args)
    return live


def lower_cell(cdef: A.CellDef, options: dict[str, Any], input_size: int, hidden: int,
               layer: str = "layer", init: dict[str, A.Expr] | None = None,
               bias: bool = True, option_spans: dict[str, Span | None] | None = None) -> Cell:
    """Lower one cell template with its options to an IR cell. An option the layer sets
    (``options``) that the lowered cell never reads is an error, located at
    ``option_spans[name]`` where given."""
    env = _ReadEnv({k: v for k, v in A.plain(cdef.options).items()})
    env.update(options)
    env.setdefault("hidden", hidden)
    if len(cdef.inputs) != 1:
        raise SpecError(f"cell '{cdef.name}' has {len(cdef.inputs)} inputs; a layer feeds one",
                        cdef.span, "concatenate inputs before the layer")
    low = _CellLowerer(cdef, env, {cdef.inputs[0]: input_size}, hidden, layer, init or {}, bias)
    if not bias:
        _check_options_outlive_bias(cdef, options, init or {})
    spans = option_spans or {}
    if cdef is library().get(cdef.name):
        _check_library_options(cdef.name, options, spans)
    cell = low.run()
    _check_options_read(low, options, set(env.log), spans)
    return cell


def _opt(k: str, v: Any) -> str:
    return f"{k}: {shown(v)}"


# Options of the library cells that contradict each other although the cell reads both:
# (cell, {option: value, ...} that together are refused, the option located, why).
_LIBRARY_CONFLICTS: tuple[tuple[str, dict[str, Any], str, str], ...] = (
    ("lstm", {"coupled": True, "forget_gate": False}, "coupled",
     "the coupled input gate is i = 1 - f and without a forget gate f = 1, so i = 0: no "
     "input ever reaches the cell state, which stays 0"),
)

# Numeric options of the library cells that a negative value would make meaningless:
# where 0 is "off", a negative value is taken as off too (`cell_clip > 0`, `proj > 0` and
# `units > 0` decide the branch); {cell: {option: why}}.
_OFF = ("a negative {k} is taken as 0, off, so it has no effect",
        "give {k} a value of 0 or more (0, the default, is off)")
_LIBRARY_NON_NEGATIVE: dict[str, dict[str, tuple[str, str]]] = {
    "lstm": {"cell_clip": _OFF, "proj": _OFF},
    "jordan": {"units": ("a negative units is taken as 0, the default (the hidden layer gets "
                         "`hidden` units), so it has no effect",
                         "give units a positive value, or leave it out")},
    "indrnn": {"u_init": ("u_init is the upper bound of u's initialiser uniform(0, u_init)",
                          "give u_init a value of 0 or more")},
}


def _check_library_options(cname: str, options: dict[str, Any],
                           spans: dict[str, Span | None]) -> None:
    """The rules on a library cell's options that no general check finds: a negative size
    or bound (silently "off"), and pairs that the cell reads but that contradict."""
    for k, (why, hint) in _LIBRARY_NON_NEGATIVE.get(cname, {}).items():
        v = options.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            raise SpecError(f"option '{k}' of cell '{cname}' is {shown(v)}: "
                            + why.format(k=k), spans.get(k), hint.format(k=k))
    for cell, combo, at, why in _LIBRARY_CONFLICTS:
        if cell == cname and all(k in options and options[k] == v for k, v in combo.items()):
            others = " and ".join(_opt(k, v) for k, v in combo.items() if k != at)
            raise SpecError(f"option '{at}' of cell '{cname}' contradicts {others}: {why}",
                            spans.get(at), f"remove {at}, or "
                            + " and ".join(k for k in combo if k != at))


def _check_options_read(low: _CellLowerer, options: dict[str, Any], read: set[str],
                        spans: dict[str, Span | None]) -> None:
    """An option the layer sets that the cell, with the layer's other options, never reads
    (it is only read in branches they switch off, or only initialises a parameter whose
    initialiser the layer replaces) has no effect: an error naming the options that
    switched it off."""
    cdef = low.cdef
    for k in options:
        if k in read:
            continue
        for pname, pattern in low.replaced_inits:
            decl = low.decls[pname]
            if k in _refs(decl.init, set()):
                raise SpecError(
                    f"option '{k}' of cell '{cdef.name}' initialises {pname}, whose initialiser "
                    f"the layer's init replaces ({pattern}: ...), so it has no effect",
                    spans.get(k), f"remove {k}, or {pattern} from init")
        deciders: dict[str, Any] = {}
        where: list[str] = []
        short: list[str] = []
        for names, e, cond in low.decided:
            untaken = e.other if cond else e.then
            refs = _refs(untaken, set())
            refs |= {r for p in cdef.params if p.name in refs for r in _refs((p.shape, p.init),
                                                                             set())}
            text = expr_str(e.cond)
            if isinstance(e.cond, A.BinOp | A.Not):
                text = f"`{text}`"
            if k in _refs(e.cond, set()) and k not in names:
                # `a and k` with a false: decided before it reads k
                for n in names:
                    deciders.setdefault(n, low.env.get(n))
                if text not in short:
                    short.append(text)
            elif k in refs and k not in names:
                for n in names:
                    deciders.setdefault(n, low.env.get(n))
                phrase = f"{text} is {'false' if cond else 'true'}"
                if phrase not in where:
                    where.append(phrase)
        if not deciders:
            raise SpecError(f"option '{k}' of cell '{cdef.name}' has no effect with the layer's "
                            "other options: the cell as they make it never reads it",
                            spans.get(k), f"remove {k}")
        declared = {name for name, _ in cdef.options.items}
        given = [_opt(n, v) + ("" if n in options or n not in declared else " (the default)")
                 for n, v in deciders.items()]
        with_text = ", ".join(given[:-1]) + " and " + given[-1] if len(given) > 1 else given[0]
        why = []
        if where:
            only = ", ".join(where[:-1]) + " or " + where[-1] if len(where) > 1 else where[0]
            why.append(f"the cell reads {k} only where {only}")
        if short:
            why.append(f"{' and '.join(short)} {'is' if len(short) == 1 else 'are'} decided "
                       f"without reading {k}")
        raise SpecError(
            f"option '{k}' of cell '{cdef.name}' has no effect with {with_text}: "
            + "; ".join(why), spans.get(k),
            f"remove {k}, or change " + " or ".join(deciders))


def _check_options_outlive_bias(cdef: A.CellDef, options: dict[str, Any],
                                init: dict[str, A.Expr]) -> None:
    """An option the layer sets that only initialises biases, which `bias: false` drops
    (lstm(bias: false, forget_bias: 2.0)), would silently do nothing."""
    read = _refs((cdef.equations, cdef.states, tuple(init.values()),
                  tuple(p for p in cdef.params if not _is_bias(p.name))), set())
    for k in options:
        if k not in read:
            biases = [p.name for p in cdef.params if _is_bias(p.name)
                      and k in _refs((p.shape, p.init), set())]
            if biases:
                raise SpecError(
                    f"option '{k}' initialises {', '.join(biases)}, which `bias: false` drops, "
                    "so it has no effect", None, f"remove {k}, or bias: false")


# ------------------------------------------------------------------ model


def spec_hash(spec: A.Spec) -> str:
    """sha256 of the canonical form of the spec (identical for its YAML and text forms)."""
    blob = json.dumps(to_data(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Sizes:
    """Sizes that come from data: input width and output width."""

    n_in: int | None = None
    n_out: int | None = None
    task: str | None = None
    input: str | None = None  # the dataset's inputs: "tokens" or "features"


def validate(spec: A.Spec) -> tuple[dict, dict | None]:
    """Check the model and train blocks against the schema; defaults filled in."""
    if spec.model is None:
        from rnnc.errors import Span as _S

        span = _S(spec.source, 1, 1) if spec.source else None
        raise SpecError("the spec has no model block", span,
                        in_syntax(span, "add `model NAME { ... }`", "add a `model:` block"))
    model = MODEL.validate(spec.model, "model")
    layers = spec.model.get("layers")
    if layers is not None and not isinstance(layers, A.CList):
        raise SpecError("the model's layers must be a list", spec.model.key_span("layers")
                        or spec.model.span, "e.g. layers: [{elman: {hidden: 8}}] in YAML, "
                        "one `layer elman(hidden: 8)` line each in the text language")
    if not isinstance(layers, A.CList) or not layers.items:
        raise SpecError("the model has no layers", spec.model.key_span("layers")
                        or spec.model.span, in_syntax(
                            spec.model.span, "add at least one `layer CELL(hidden: N)`",
                            "add at least one layer: `layers: [{CELL: {hidden: N}}]`"))
    train = TRAIN.validate(spec.train, "train") if spec.train is not None else None
    return model, train


def data_sizes(train: dict | None, spec: A.Spec, base_dir: str = ".") -> Sizes:
    """Build the dataset named by the spec to learn the sizes it implies."""
    if train is None:
        return Sizes()
    from rnnc.data import build_dataset
    from rnnc.errors import RnncError

    name, opts = train["data"]
    try:
        ds = build_dataset(name, opts, train["seed"], base_dir=base_dir)
    except RnncError as err:
        raise err.with_span(data_error_span(spec, err)) from None
    return Sizes(ds.n_in, ds.n_out, ds.task, ds.input)


def data_error_span(spec: A.Spec, err: Exception) -> Span | None:
    """Where a dataset's error points in the spec: the option it names (its value, or its
    key where the value has no place), else the `data` entry."""
    here = spec.train.key_span("data") if spec.train is not None else None
    option = getattr(err, "option", None)
    data = spec.train.get("data") if spec.train is not None else None
    if option is None or not isinstance(data, A.CMap) or len(data.items) != 1:
        return here
    opts = data.items[0][1]
    if not isinstance(opts, A.CMap):
        return here
    value = opts.get(option)
    return getattr(value, "span", None) or opts.key_span(option) or here


def lower(spec: A.Spec, sizes: Sizes | None = None, base_dir: str = ".") -> Program:
    """Lower a whole spec to a :class:`Program`.

    ``sizes`` gives the data-dependent sizes (``vocab: auto``); when it is None
    and the spec needs one, the spec's dataset is built to find it.
    """
    model_cfg, train_cfg = validate(spec)
    need = _needs_data(model_cfg)
    if sizes is None:
        sizes = data_sizes(train_cfg, spec, base_dir) if need else Sizes()
    enc = _input(model_cfg, sizes, spec)
    layers = _layers(spec, model_cfg, train_cfg, enc.size)
    if model_cfg["stack"] == "gated_feedback":
        from rnnc.ir.gated_feedback import gated_feedback_stack

        layers = gated_feedback_stack(layers, spec)
    head = _head(model_cfg, sizes, spec, layers[-1].output_size)
    dropout = (train_cfg or {}).get("dropout") or {}
    model = Model(
        name=model_cfg["name"], input=enc, layers=tuple(layers), head=head,
        stack=model_cfg["stack"], input_dropout=dropout.get("input", 0.0),
        output_dropout=dropout.get("output", 0.0),
    )
    check_identifier(model.name, "model name", spec.model.key_span("name"))
    plan = _plan(train_cfg, model_cfg, spec) if train_cfg is not None else None
    return Program(model, plan, spec_hash(spec), to_data(spec),
                   spec.source.name if spec.source else "")


def _needs_data(model_cfg: dict) -> bool:
    kind, opts = model_cfg["input"]
    hk, hopts = model_cfg["head"]
    return "auto" in (opts.get("vocab"), opts.get("features"), hopts.get("classes"),
                      hopts.get("size"))


def _auto(value: Any, from_data: int | None, what: str, span: Span | None, how: str,
          dataset: bool = False) -> int:
    """A size that may be `auto`; `how` is the spec text that gives it as a number.
    With ``dataset`` (``from_data`` was measured on the spec's own dataset), a number
    must be the dataset's: the generated module would refuse every batch."""
    key, kind, args = re.fullmatch(r"(\w+) (\w+)\((.*)\)", how).groups()
    how = in_syntax(span, how, f"{key}: {{{kind}: {{{args}}}}}")  # the spec's own syntax
    if value != "auto":
        if dataset and from_data is not None and int(value) != from_data:
            raise SpecError(f"{what} is {int(value)}, but the dataset's is {from_data}", span,
                            f"write auto (or {from_data}) in `{how}`")
        return int(value)
    if from_data is None:
        raise SpecError(f"{what} is auto, but there is no dataset to take it from", span,
                        f"give it as a number, `{how}`, or add a train block with data")
    return int(from_data)


def _input(model_cfg: dict, sizes: Sizes, spec: A.Spec) -> InputEncoding:
    kind, opts = model_cfg["input"]
    span = spec.model.key_span("input")
    if sizes.input is not None and (sizes.input == "tokens") != (kind != "dense"):
        if sizes.input == "tokens":
            raise SpecError(f"the dataset gives token ids, but the input is {kind}", span,
                            in_syntax(span, "write `input onehot(vocab: auto)` or "
                                      "`input embedding(vocab: auto, dim: N)`",
                                      "write `input: {onehot: {vocab: auto}}` or "
                                      "`input: {embedding: {vocab: auto, dim: N}}`"))
        raise SpecError(f"the dataset gives feature vectors, but the input is {kind}", span,
                        in_syntax(span, "write `input dense(features: auto)`",
                                  "write `input: {dense: {features: auto}}`"))
    if kind == "onehot":
        v = _auto(opts["vocab"], sizes.n_in, "the input vocabulary", span,
                  "input onehot(vocab: N)", sizes.task is not None)
        return InputEncoding("onehot", vocab=v, size=v)
    if kind == "embedding":
        v = _auto(opts["vocab"], sizes.n_in, "the input vocabulary", span,
                  f"input embedding(vocab: N, dim: {opts['dim']})", sizes.task is not None)
        return InputEncoding("embedding", vocab=v, size=opts["dim"])
    f = _auto(opts["features"], sizes.n_in, "the input feature count", span,
              "input dense(features: N)", sizes.task is not None)
    return InputEncoding("dense", size=f, normalize=opts["normalize"])


def _head(model_cfg: dict, sizes: Sizes, spec: A.Spec, width: int) -> Head:
    kind, opts = model_cfg["head"]
    span = spec.model.key_span("head")
    n = opts.get("classes", opts.get("size"))
    out = _auto(n, sizes.n_out, "the head's output size", span,
                f"head {kind}(at: {opts['at']}, {'classes' if kind == 'softmax' else 'size'}: N)",
                sizes.task is not None)
    if sizes.task is not None:
        want = {"softmax": "classify", "linear": "regress"}[kind]
        if not sizes.task.startswith(want):
            raise SpecError(
                f"a {kind} head does not fit the dataset's task ({sizes.task})", span,
                "use softmax for classification and linear for regression")
        if sizes.task.endswith("_last") != (opts["at"] == "last"):
            at = "last" if sizes.task.endswith("_last") else "per_step"
            raise SpecError(f"the dataset has targets {at.replace('_', ' ')}, but the head "
                            f"is at {opts['at']}", span,
                            in_syntax(span, f"write `head {kind} {at}`",
                                      f"write `head: {{{kind}: {at}}}`"))
    return Head(kind, opts["at"], width, out)


def _layers(spec: A.Spec, model_cfg: dict, train_cfg: dict | None, in_size: int) -> list[Layer]:
    lib = library()
    defined: set[str] = set()
    for cell in spec.cells:
        if cell.name in defined:
            raise SpecError(f"cell '{cell.name}' is defined twice", cell.span,
                            "rename or remove one of them")
        defined.add(cell.name)
    layers_node: A.CList = spec.model.get("layers")
    layer_dropout = ((train_cfg or {}).get("dropout") or {}).get("layers", 0.0)
    out: list[Layer] = []
    names: set[str] = set()
    size = in_size
    for i, node in enumerate(layers_node.items):
        if isinstance(node, A.CScalar) and isinstance(node.value, str):
            node = A.CMap(((node.value, A.CMap((), node.span)),), node.span, (node.span,))
        if not isinstance(node, A.CMap) or len(node.items) != 1:
            nspan = getattr(node, "span", None)
            raise SpecError("a layer is `CELL(hidden: N, ...)`", nspan,
                            in_syntax(nspan, "e.g. `layer lstm(hidden: 128)`",
                                      "e.g. `- lstm: {hidden: 128}`"))
        (cname, opts_node), = node.items
        cspan = node.key_span(cname)
        cdef = spec.cell(cname) or lib.get(cname)
        if cdef is None:
            choices = [c.name for c in spec.cells] + list(lib)
            if cname in ("softmax", "linear"):  # the head written as a last layer
                raise SpecError(f"unknown cell '{cname}': {cname} is a head, not a layer",
                                cspan, in_syntax(cspan, f"write `head {cname} per_step` (or "
                                                 "last) after the layers",
                                                 f"write `head: {{{cname}: per_step}}` (or "
                                                 "last) beside `layers:`"))
            raise SpecError(f"unknown cell '{clip(cname)}'", cspan, did_you_mean(cname, choices))
        if opts_node is None or (isinstance(opts_node, A.CScalar) and opts_node.value is None):
            opts_node = A.CMap((), cspan)
        if not isinstance(opts_node, A.CMap):
            raise SpecError(f"the options of layer '{cname}' must be a mapping", cspan)
        cell_opts = {k for k, _ in cdef.options.items}
        layer_part, cell_part = [], []
        for (k, v), ks in zip(opts_node.items, opts_node.key_spans or [None] * 99, strict=False):
            if k in LAYER_OPTIONS:
                layer_part.append((k, v, ks))
            elif k in cell_opts:
                cell_part.append((k, v, ks))
            else:
                raise SpecError(f"unknown option '{clip(k)}' for cell '{cname}'", ks or cspan,
                                did_you_mean(k, list(LAYER_OPTIONS) + sorted(cell_opts)))
        lo = Fields(dict(LAYER_OPTIONS)).validate(
            A.CMap(tuple((k, v) for k, v, _ in layer_part), cspan,
                   tuple(s for _, _, s in layer_part)), f"layer {i + 1} ({cname})")
        given = {k: ks for k, _, ks in layer_part}
        if "merge" in given and lo["direction"] != "bidirectional":
            raise SpecError(
                f"option 'merge' of layer {i + 1} ({cname}) has no effect with direction: "
                f"{lo['direction']}{'' if 'direction' in given else ' (the default)'}: only a "
                "bidirectional layer merges its two directions' outputs", given["merge"] or cspan,
                "remove merge, or direction: bidirectional")
        copts = {}
        defaults = A.plain(cdef.options)
        for k, v, ks in cell_part:
            val = A.plain(v)
            d = defaults[k]
            if isinstance(d, bool) != isinstance(val, bool) or (
                    isinstance(d, int | float) and not isinstance(val, int | float)) or (
                    isinstance(d, str) and not isinstance(val, str)):
                kind = ("true or false" if isinstance(d, bool) else
                        "a number" if isinstance(d, int | float) else "a name or string")
                raise SpecError(f"option '{k}' of cell '{cname}' must be {kind}, not {shown(val)}",
                                ks or cspan, f"the default is {_show(d)}")
            known = _compared_strings(cdef).get(k)
            if isinstance(d, str) and d not in ACTIVATIONS and known and \
                    val not in known | {d}:
                # a string option that picks a branch (not an activation, which may also be
                # tested): a value no branch tests would take the `else` of every condition
                choices = sorted(known | {d})
                raise SpecError(f"option '{k}' of cell '{cname}' is {shown(val)}, which the cell "
                                f"does not know", getattr(v, "span", None) or ks or cspan,
                                did_you_mean(val, choices)
                                or "use one of " + ", ".join(map(repr, choices)))
            if isinstance(d, str) and d in ACTIVATIONS and val not in ACTIVATIONS:
                # an activation option: refused here, at the layer that sets it, not inside
                # the cell's equations (for a library cell, a file the user did not write)
                raise SpecError(f"option '{k}' of cell '{cname}' is '{val}', which is not an "
                                "activation", getattr(v, "span", None) or ks or cspan,
                                did_you_mean(val, ACTIVATIONS))
            copts[k] = val
        name = lo["name"] or f"layer{i + 1}"
        check_identifier(name, "layer name", cspan)
        if name in names or name in ("head", "input"):
            raise SpecError(f"layer name '{name}' is used twice", cspan, "give each a new name")
        names.add(name)
        init = {}
        if lo["init"] is not None:
            if not isinstance(lo["init"], dict):
                raise SpecError("layer init must map parameter names to initialisers", cspan,
                                "e.g. init: {U_*: orthogonal}")
            node_init = next(v for k, v, _ in layer_part if k == "init")
            init = _init_overrides(lo["init"], node_init, cspan)
        try:
            cell = lower_cell(cdef, copts, size, lo["hidden"], name, init, lo["bias"],
                              {k: ks for k, _, ks in cell_part})
        except SpecError as err:
            raise err.with_span(cspan) from None
        direction = lo["direction"]
        dirs = {"forward": ("fwd",), "backward": ("bwd",), "bidirectional": ("fwd", "bwd")}
        residual = lo["residual"] or model_cfg["stack"] == "residual"
        layer = Layer(name, cell, size, dirs[direction], lo["merge"], residual,
                      lo["dropout"] or layer_dropout)
        if residual and layer.output_size != size:
            raise ShapeError(
                f"layer '{name}' is residual but its output has size {layer.output_size} and "
                f"its input {size}", cspan, "residual layers need hidden equal to their input"
                + (in_syntax(cspan, " (`stack residual` makes every layer residual, the first "
                             "too: set `residual: true` on the later layers instead)",
                             " (`stack: residual` makes every layer residual, the first "
                             "too: set `residual: true` on the later layers instead)")
                   if model_cfg["stack"] == "residual" and not lo["residual"] else ""))
        out.append(layer)
        size = layer.output_size
    return out


def _plan(cfg: dict, model_cfg: dict, spec: A.Spec) -> TrainPlan:
    bptt = cfg["bptt"]
    k1 = k2 = None
    if bptt is not None:
        k1 = bptt["k1"]
        k2 = bptt["k2"] if bptt["k2"] is not None else k1
        if k2 < k1:
            raise SpecError(f"bptt k2 ({k2}) is smaller than k1 ({k1})",
                            spec.train.key_span("bptt"),
                            "every k1 steps rnnc backpropagates the last k1 losses through k2 "
                            "steps, so k2 >= k1")
    data_name, data_opts = cfg["data"]
    if cfg["reset"] == "document" and not (data_name == "text"
                                           and (data_opts or {}).get("doc_separator")):
        what = ("the text data has no doc_separator" if data_name == "text"
                else f"the data '{data_name}' is not text")
        raise SpecError(f"reset document needs documents, but {what}",
                        spec.train.key_span("reset"),
                        'give the text data a separator: data text(path: "...", '
                        'doc_separator: "\\n\\n"); sequence datasets reset at every '
                        "sequence already")
    up_name, up_opts = cfg["updater"]
    if up_opts is None:
        from rnnc.backends.numpy.runtime_optim import UPDATER_DEFAULTS

        up_opts = dict(UPDATER_DEFAULTS[up_name])
    sched = None
    if cfg["schedule"] is not None:
        sched = (cfg["schedule"][0], tuple(sorted(cfg["schedule"][1].items())))
    clip = cfg["clip"] or {}
    es = cfg["early_stop"]
    sample = cfg["sample"] or {}
    data_name, data_opts = cfg["data"]
    return TrainPlan(
        data=(data_name, tuple(sorted((k, _freeze(v)) for k, v in data_opts.items()))),
        k1=k1, k2=k2,
        updater=(up_name, tuple(sorted(up_opts.items()))),
        schedule=sched,
        clip_norm=clip.get("norm"), clip_value=clip.get("value"),
        l1=cfg["l1"], l2=cfg["l2"], epochs=cfg["epochs"], batch=cfg["batch"],
        early_stop=(es["metric"], es["patience"]) if es else None,
        seed=cfg["seed"], reset=cfg["reset"], dtype=model_cfg["dtype"],
        sample_every=sample.get("every", 0), sample_length=sample.get("length", 200),
        checkpoint_every=(cfg["checkpoint"] or {}).get("every", 0),
    )


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _show(v: Any) -> str:
    """A value as the spec language writes it."""
    return shown(v)
