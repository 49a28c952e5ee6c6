"""Reverse-mode autodiff of a cell: the backward IR that generated BPTT runs.

:func:`autodiff` turns a forward :class:`~rnnc.ir.nodes.Cell` into a
:class:`CellGrad` whose three sections mirror the forward's:

``body``
    runs once per time step, in reverse time order. It reads the *seeds* (the
    adjoint of each next-state value and of the step's output) and the forward
    values of the same step (``saved``), and gives the adjoint of every state
    as it entered the step (``state_grads``), to be passed to the previous step.
    It only computes what the recurrence needs.
``hoisted``
    runs once, after the time loop, over whole ``(T, B, n)`` arrays. A name of
    a body value (forward or backward) here means its stack over all steps
    (``stacked`` forward values, ``exports`` of the backward body). It holds
    every gradient that does not feed the recurrence: the adjoints of the
    inputs (``input_grads``), of the hoisted forward values, and the
    contributions to parameters and loop invariants. A weight used in the body,
    ``U @ h``, thus gets its gradient as ONE matmul over all steps,
    ``outer(dU_h, h)`` with both operands stacked ("hoisted weight gradients"),
    instead of a small product per step.
``invariant``
    runs once, after ``hoisted``, over unbatched values only: it turns the
    adjoints of loop invariants (a fused weight ``[W_f; W_i]``, a constant
    expression of parameters) into parameter gradients (``param_grads``). The
    values it starts from are the ``partials`` of the hoisted section, which a
    driver running several truncated-BPTT windows sums over the windows.

Each op has one gradient rule in :data:`GRAD_RULES`; the backward uses the
backward-only ops of :mod:`rnnc.ir.ops` (``matmul_t``, ``outer``, ``bsum``,
``act_grad``, ``clip_grad``, ``pad``, ``zeros``) plus forward element-wise ops,
``expand`` and ``sumf`` (each the other's gradient) and ``slice``/``concat`` (a
``slice`` with attribute ``axis=0`` takes rows of a matrix: the gradient of
``pconcat``). Where every user of a value is a
``slice`` and the slices do not overlap (the split after a fused matmul), its
adjoint is one ``concat`` of the slices' adjoints, not a sum of pads.

    >>> from rnnc.ir.lower import library, lower_cell
    >>> cell = lower_cell(library()["elman"], {}, input_size=3, hidden=4)
    >>> print(grad_str(autodiff(cell)))
    grad elman
      seeds %dh_next -> %h_next, %dy -> %h_next
      body (per step, reversed):
        %d_h_next: [B, 4] = add(%dh_next, %dy)
        %d_t4: [B, 4] = act_grad(%h_next, %d_h_next) {fn='tanh'}
        %d_h: [B, 4] = matmul_t(%U, %d_t4)
      state grads %h <- %d_h
      saved per step %h_next; stacked %h
      exports %d_t4
      hoisted (all steps):
        %d_b: [4] = bsum(%d_t4)
        %d_U: [4, 4] = outer(%d_t4, %h)
        %d_W: [4, 3] = outer(%d_t4, %x)
        %d_x: [B, 3] = matmul_t(%W, %d_t4)
      input grads %x <- %d_x
      param grads %W <- %d_W, %U <- %d_U, %b <- %d_b

The weight gradients ``%d_W`` and ``%d_U`` are single products over all steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from rnnc.ir.nodes import Cell, Instr, Shape, value_shape
from rnnc.ir.ops import OPS, attrs, fmt_float


@dataclass(frozen=True)
class CellGrad:
    """The backward of one cell (see the module docstring for the sections)."""

    cell: Cell
    seeds: tuple[tuple[str, str], ...]  # (seed, the forward value it is the adjoint of)
    state_seeds: tuple[tuple[str, str], ...]  # (state, seed for the adjoint of its next value)
    output_seed: str  # seed for the adjoint of the step's output
    body: tuple[Instr, ...]  # per step, in execution order (the forward's reversed)
    state_grads: tuple[tuple[str, str], ...]  # (state, adjoint of the state entering the step)
    saved: tuple[str, ...]  # forward body values and states that ``body`` reads per step
    stacked: tuple[str, ...]  # forward body values and states ``hoisted`` reads as stacks
    exports: tuple[str, ...]  # body adjoints (or seeds) that ``hoisted`` reads as stacks
    views: tuple[tuple[str, str, int, int], ...]
    """(export, concat, lo, hi): the export is features lo:hi of an exported body concat,
    so a driver can keep its stack as a view of the concat's stack instead of a copy."""
    hoisted: tuple[Instr, ...]  # once over all steps
    input_grads: tuple[tuple[str, str], ...]  # (input, its adjoint over all steps)
    partials: tuple[tuple[str, str], ...]  # (unbatched value, its adjoint from ``hoisted``)
    invariant: tuple[Instr, ...]  # once, unbatched; reads the partials
    param_grads: tuple[tuple[str, str], ...]  # (parameter, gradient)


# ------------------------------------------------------------------ rules

# A rule gets the forward instruction, the name of its output's adjoint ``g`` and
# the operand position ``j``, and returns the name of the contribution to operand
# j's adjoint (before broadcasting is undone), emitting instructions through ``b``.
# It returns None when the operand gets no gradient.
Rule = Callable[["_Builder", Instr, str, int], str | None]


def _g_add(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    return g


def _g_sub(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    return g if j == 0 else b.emit("neg", (g,), b.shape(g), b.through(ins))


def _g_neg(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    return b.emit("neg", (g,), b.shape(g), b.through(ins))


def _g_mul(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    return b.emit("mul", (g, ins.args[1 - j]), b.shape(g), b.through(ins))


def _g_div(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    a, d = ins.args
    if j == 0:
        return b.emit("div", (g, d), b.shape(g), b.through(ins))
    gy = b.emit("mul", (g, ins.name), b.shape(g), "d(a/b)/db = -(a/b) / b: " + b.through(ins))
    q = b.emit("div", (gy, d), b.shape(g), "")
    return b.emit("neg", (q,), b.shape(g), "")


def _g_matmul(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    w, v = ins.args
    if j == 1:
        return b.emit("matmul_t", (w, g), b.fshape(v), b.through(ins))
    # the weight: sum over every example (and step, once hoisted) of g v^T
    return b.emit("outer", (g, v), b.fshape(w),
                  f"d{w} = sum over steps and rows of d({display(ins.name)}) {display(v)}^T",
                  batched=False)


def _g_act(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    fn = ins.attr("fn")
    return b.emit("act_grad", (ins.name, g), b.shape(g), f"{fn}' " + b.through(ins), fn=fn)


def _g_clip(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    lo, hi = ins.attr("lo"), ins.attr("hi")
    return b.emit("clip_grad", (ins.name, g), b.shape(g), "clip' " + b.through(ins),
                  lo=lo, hi=hi)


def _g_concat(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    lo = sum(b.fshape(a)[0] for a in ins.args[:j])
    hi = lo + b.fshape(ins.args[j])[0]
    return b.emit("slice", (g,), (hi - lo,), b.through(ins), lo=lo, hi=hi)


def _g_slice(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    # recorded as a piece; the operand's adjoint is assembled when it is reached
    b.piece(ins.args[0], ins.attr("lo"), ins.attr("hi"), g)
    return None


def _g_expand(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    return b.emit("sumf", (g,), b.fshape(ins.args[0]), "sum over the broadcast features: "
                  + b.through(ins))


def _g_sumf(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    # every feature of the operand gets the adjoint of its row's sum
    n = b.fshape(ins.args[0])[0]
    return b.emit("expand", (g,), (n,), "the sum's adjoint to each feature: " + b.through(ins),
                  n=n)


def _g_pconcat(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    lo = sum(b.fshape(a)[0] for a in ins.args[:j])
    shape = b.fshape(ins.args[j])
    hi = lo + shape[0]
    return b.emit("slice", (g,), shape, f"rows {lo}:{hi} of the fused {display(ins.name)}",
                  lo=lo, hi=hi, axis=0)


def _g_const(b: _Builder, ins: Instr, g: str, j: int) -> str | None:
    return None


GRAD_RULES: dict[str, Rule] = {
    "const": _g_const,
    "add": _g_add,
    "sub": _g_sub,
    "mul": _g_mul,
    "div": _g_div,
    "neg": _g_neg,
    "matmul": _g_matmul,
    "act": _g_act,
    "clip": _g_clip,
    "concat": _g_concat,
    "slice": _g_slice,
    "expand": _g_expand,
    "sumf": _g_sumf,
    "pconcat": _g_pconcat,
}
"""One gradient rule per forward op, keyed like :data:`rnnc.ir.ops.OPS`."""


# ----------------------------------------------------------------- builder

BODY, POST, INV = "body", "hoisted", "invariant"


class _Builder:
    """Accumulates adjoint contributions and emits the backward sections."""

    def __init__(self, cell: Cell):
        self.cell = cell
        self.fwd: dict[str, tuple[Shape, bool]] = {}
        self.kind: dict[str, str] = {}
        for p in cell.params:
            self.fwd[p.name] = (p.shape, False)
            self.kind[p.name] = "param"
        for v in cell.inputs:
            self.fwd[v.name] = ((v.size,), True)
            self.kind[v.name] = "input"
        for v in cell.states:
            self.fwd[v.name] = ((v.size,), True)
            self.kind[v.name] = "state"
        self.defs: dict[str, Instr] = {}
        for section, instrs in ((INV, cell.invariant), (POST, cell.hoisted), (BODY, cell.body)):
            for ins in instrs:
                self.fwd[ins.name] = (ins.shape, ins.batched)
                self.defs[ins.name] = ins
                if not ins.batched:
                    self.kind[ins.name] = "const" if ins.op == "const" else "inv"
                else:
                    self.kind[ins.name] = "hoisted" if section == POST else "body"
        self.users: dict[str, list[Instr]] = {n: [] for n in self.fwd}
        for ins in cell.instrs:
            for a in ins.args:
                self.users[a].append(ins)
        self.taken = set(self.fwd)
        # how many adjoint terms each value may receive (uses, plus seeds added later)
        self.n_uses: dict[str, int] = {n: len(us) for n, us in self.users.items()}
        self.bwd: dict[str, tuple[Shape, bool, str]] = {}  # name -> (shape, batched, level)
        self.sections: dict[str, list[Instr]] = {BODY: [], POST: [], INV: []}
        self.level = BODY
        self.contrib: dict[str, list[str]] = {}
        self.pieces: dict[str, list[tuple[int, int, str]]] = {}
        self.adjoint: dict[str, str] = {}
        self.target = ""  # the forward value whose contribution is being built
        self.n_tmp = 0
        self.texts = IRMath(cell)

    # -- names, shapes
    def fresh(self, base: str) -> str:
        name = base
        k = 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def numbered(self, base: str) -> str:
        k = 1
        while f"{base}_{k}" in self.taken:
            k += 1
        self.taken.add(f"{base}_{k}")
        return f"{base}_{k}"

    def fshape(self, name: str) -> Shape:
        return self.fwd[name][0] if name in self.fwd else self.bwd[name][0]

    def shape(self, name: str) -> Shape:
        return self.fshape(name)

    def batched(self, name: str) -> bool:
        return self.fwd[name][1] if name in self.fwd else self.bwd[name][1]

    def through(self, ins: Instr) -> str:
        """Comment text: the forward equation a backward line goes back through."""
        return "back through " + self.texts.eq(ins.name)

    def level_of(self, name: str) -> str:
        """Where the adjoint of a forward value is assembled."""
        k = self.kind[name]
        if k in ("body", "state"):
            return BODY
        if k in ("hoisted", "input"):
            return POST
        return INV

    # -- emission
    def emit(self, op: str, args: tuple[str, ...], shape: Shape, comment: str = "",
             batched: bool | None = None, name: str | None = None, **kw: Any) -> str:
        if batched is None:
            batched = any(self.batched(a) for a in args)
        if name is None:
            self.n_tmp += 1
            if not self.target:
                name = self.fresh(f"g{self.n_tmp}")
            elif self.n_uses.get(self.target, 0) > 1:  # d_<v> is kept for the sum
                name = self.numbered(f"d_{self.target}")
            else:
                name = self.fresh(f"d_{self.target}")
        self.sections[self.level].append(
            Instr(name, op, args, tuple(shape), batched, attrs(**kw), None, comment))
        self.bwd[name] = (tuple(shape), batched, self.level)
        return name

    def piece(self, target: str, lo: int, hi: int, g: str) -> None:
        self.pieces.setdefault(target, []).append((lo, hi, g))

    def seed(self, target: str, g: str) -> None:
        self.n_uses[target] = self.n_uses.get(target, 0) + 1
        self.contribute(target, g)

    def contribute(self, target: str, g: str) -> None:
        self.contrib.setdefault(target, []).append(g)

    # -- adjoints
    def materialize(self, name: str) -> str | None:
        """The adjoint of forward value ``name``: its contributions summed (or tiled)."""
        if name in self.adjoint:
            return self.adjoint[name]
        self.target = name
        terms = list(self.contrib.get(name, []))
        pieces = sorted(self.pieces.get(name, []))
        n = self.fshape(name)[0] if self.fshape(name) else 0
        if pieces:
            users = self.users.get(name, [])
            tiling = (not terms and all(u.op == "slice" for u in users)
                      and all(a[1] <= b[0] for a, b in zip(pieces, pieces[1:], strict=False)))
            if tiling:
                parts, at = [], 0
                for lo, hi, g in pieces:
                    if lo > at:
                        parts.append(self._zeros_slice(name, at, lo))
                    parts.append(g)
                    at = hi
                if at < n:
                    parts.append(self._zeros_slice(name, at, n))
                if len(parts) == 1:
                    terms = parts
                else:
                    terms = [self.emit("concat", tuple(parts), (n,),
                                       f"the adjoints of {display(name)}'s slices side by side",
                                       name=self._dname(name))]
            else:
                for lo, hi, g in pieces:
                    terms.append(self.emit("pad", (g,), (n,),
                                           f"slice {lo}:{hi} of {display(name)} back in place",
                                           lo=lo, after=n - hi))
        if not terms:
            self.adjoint[name] = None  # type: ignore[assignment]
            self.target = ""
            return None
        total = terms[0]
        for k, t in enumerate(terms[1:]):
            last = k == len(terms) - 2
            total = self.emit("add", (total, t), self.fshape(name),
                              f"sum over the uses of {display(name)}",
                              name=self._dname(name) if last else self.numbered(f"d_{name}"))
        self.adjoint[name] = total
        self.target = ""
        return total

    def adjoint_or_zeros(self, name: str, why: str) -> str:
        d = self.materialize(name)
        if d is None:
            self.target = name
            d = self.emit("zeros", (name,), self.fshape(name), why, name=self._dname(name),
                          batched=self.fwd[name][1])
            self.target = ""
        return d

    def _dname(self, name: str) -> str:
        return self.fresh(f"d_{name}")

    def _zeros_slice(self, name: str, lo: int, hi: int) -> str:
        s = self.emit("slice", (name,), (hi - lo,), f"features {lo}:{hi} of {display(name)}",
                      lo=lo, hi=hi)
        return self.emit("zeros", (s,), (hi - lo,), "no adjoint flows back here")

    def backprop(self, ins: Instr) -> None:
        """Apply ``ins``'s rule: a contribution to each operand's adjoint."""
        g = self.materialize(ins.name)
        if g is None:
            return
        rule = GRAD_RULES[ins.op]
        for j, a in enumerate(ins.args):
            if self.kind[a] == "const":
                continue
            # contributions to values assembled after the loop are computed there, on stacks
            if self.cur == BODY and self.level_of(a) == BODY:
                self.level = BODY
            else:
                self.level = INV if self.cur == INV else POST
            self.target = a
            c = rule(self, ins, g, j)
            if c is not None and self.batched(c) and not self.fwd[a][1]:
                c = self.emit("bsum", (c,), self.fwd[a][0],
                              f"d{display(a)}: the sum over steps and rows", batched=False)
            self.target = ""
            if c is not None:
                self.contribute(a, c)
        self.level = self.cur

    cur = BODY


def autodiff(cell: Cell, simplify: bool = True) -> CellGrad:
    """The backward IR of ``cell`` (see the module docstring).

    With ``simplify`` (the default, what both backends and ``rnnc ir --after autodiff``
    use) the backward sections then go through :func:`~rnnc.ir.passes.cse.cse_grad`: an
    adjoint expression the rules build twice (``d * xc`` from both operands of
    ``xc * xc``) is computed once. (No dead-code pass follows: dropping a copy leaves nothing
    dead, and in the library's and the tests' cells every instruction the rules emit
    reaches an adjoint the backward hands on; ``tests/test_autodiff.py`` checks that.)
    """
    b = _Builder(cell)
    # seeds: the adjoints flowing into the step from the next step and from above
    seeds: list[tuple[str, str]] = []
    state_seeds = []
    for s, v in cell.next_state:
        name = b.fresh(f"d{s}_next")
        seeds.append((name, v))
        state_seeds.append((s, name))
    output_seed = b.fresh("dy")
    seeds.append((output_seed, cell.output))
    for name, v in seeds:
        b.bwd[name] = (b.fshape(v), True, BODY)
        b.seed(v, name)

    # 1. body, per step, in reverse
    b.cur = b.level = BODY
    for ins in reversed(cell.body):
        if ins.batched:
            b.backprop(ins)
    state_grads = [(v.name, b.adjoint_or_zeros(v.name, "the state is not read"))
                   for v in cell.states]

    # 2. hoisted, once over all steps
    b.cur = b.level = POST
    for ins in reversed(cell.hoisted):
        if ins.batched:
            b.backprop(ins)
    input_grads = [(v.name, b.adjoint_or_zeros(v.name, "the input is not read"))
                   for v in cell.inputs]
    unbatched = [p.name for p in cell.params] + [
        i.name for i in cell.instrs if not i.batched and i.op != "const"]
    partials = []
    for u in unbatched:
        d = b.materialize(u)
        if d is not None:
            partials.append((u, d))

    # 3. invariant, once: the partial adjoints are where each unbatched adjoint starts
    b.cur = b.level = INV
    b.adjoint = {k: v for k, v in b.adjoint.items() if k not in unbatched}
    b.contrib = {u: [d] for u, d in partials}
    b.pieces = {}
    for ins in reversed([i for i in cell.instrs if not i.batched]):
        b.backprop(ins)
    param_grads = [(p.name, b.adjoint_or_zeros(p.name, "no gradient reaches this parameter"))
                   for p in cell.params]

    body, hoisted, invariant = b.sections[BODY], b.sections[POST], b.sections[INV]
    # the same concat of the same adjoints twice in the body (the state's and the input's
    # projections, or a projection and its fused bias, cut into the same gates): one
    body_concats: dict[tuple[str, ...], str] = {}
    rename: dict[str, str] = {}
    kept = []
    for ins in body:
        ins = replace(ins, args=tuple(rename.get(a, a) for a in ins.args))
        if ins.op == "concat" and ins.args in body_concats:
            rename[ins.name] = body_concats[ins.args]
            continue
        if ins.op == "concat":
            body_concats[ins.args] = ins.name
        kept.append(ins)
    body = kept
    state_grads = [(k, rename.get(a, a)) for k, a in state_grads]
    # a hoisted concat of the same adjoints as a body concat is that concat's stack
    kept = []
    for ins in hoisted:
        ins = replace(ins, args=tuple(rename.get(a, a) for a in ins.args))
        if ins.op == "concat" and ins.args in body_concats:
            rename[ins.name] = body_concats[ins.args]
        else:
            kept.append(ins)
    hoisted = kept
    invariant = [replace(i, args=tuple(rename.get(a, a) for a in i.args)) for i in invariant]
    input_grads = [(k, rename.get(a, a)) for k, a in input_grads]
    partials = [(k, rename.get(a, a)) for k, a in partials]
    param_grads = [(k, rename.get(a, a)) for k, a in param_grads]

    grad = with_interface(CellGrad(
        cell=cell, seeds=tuple(seeds), state_seeds=tuple(state_seeds),
        output_seed=output_seed, body=tuple(body), state_grads=tuple(state_grads),
        saved=(), stacked=(), exports=(), views=(),
        hoisted=tuple(hoisted), input_grads=tuple(input_grads), partials=tuple(partials),
        invariant=tuple(invariant), param_grads=tuple(param_grads),
    ))
    if simplify:
        from rnnc.ir.passes.cse import cse_grad

        grad = cse_grad(grad)
    return grad


def with_interface(grad: CellGrad) -> CellGrad:
    """``grad`` with what its sections read across the loop recomputed from them: the
    forward values the body reads per step (``saved``) and the hoisted section reads as
    stacks (``stacked``), the body adjoints it reads as stacks (``exports``) and the
    exports that are features of an exported concat (``views``)."""
    cell, body, hoisted = grad.cell, grad.body, grad.hoisted
    width = {i.name: i.shape[0] for i in body if i.shape}
    width.update({s: value_shape(cell, v)[0] for s, v in grad.seeds})
    body_names = {i.name for i in body} | {s for s, _ in grad.seeds}
    fwd_step = {v.name for v in cell.states} | {i.name for i in cell.body if i.batched}
    saved = _ordered(a for i in body for a in i.args if a in fwd_step)
    stacked = _ordered(a for i in hoisted for a in i.args if a in fwd_step)
    exports = _ordered([a for i in hoisted for a in i.args if a in body_names]
                       + [a for _, a in grad.input_grads if a in body_names])
    # an export that is part of an exported body concat is a slice of its stack
    views: list[tuple[str, str, int, int]] = []
    viewed: set[str] = set()
    for ins in body:
        if ins.op == "concat" and ins.name in exports:
            at = 0
            for a in ins.args:
                n = width[a] if a in width else value_shape(cell, a)[0]
                if a in exports and a not in viewed:
                    views.append((a, ins.name, at, at + n))
                    viewed.add(a)
                at += n
    return replace(grad, saved=saved, stacked=stacked, exports=exports, views=tuple(views))


def _ordered(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# ------------------------------------------------------------- math text


_TEMP = re.compile(r"^t\d+$")


def display(name: str) -> str:
    """How a value reads in math text: ``h_next`` is ``h'``."""
    return name[:-5] + "'" if name.endswith("_next") else name


class IRMath:
    """A cell's values as math text over its named values (temporaries inlined).

    ``t3 = add(t1, t2)`` with ``t1 = matmul(W_f, x)`` reads ``W_f @ x + U_f @ h``; a
    slice of a fused matmul that is exactly one weight's rows reads as that weight's
    product again (``W_i @ x``).
    """

    def __init__(self, cell: Cell):
        self.cell = cell
        self.defs = {i.name: i for i in cell.instrs}
        self.shapes = {p.name: p.shape for p in cell.params}
        self.shapes.update({i.name: i.shape for i in cell.instrs})
        self.primed = {v: f"{s}'" for s, v in cell.next_state if v in self.defs}

    def name(self, name: str) -> str:
        return self.primed.get(name) or display(name)

    def expr(self, name: str, depth: int = 0) -> str:
        ins = self.defs.get(name)
        if ins is None or (depth and not _TEMP.match(name)):
            return self.name(name)
        if ins.op == "const":
            return fmt_float(ins.attr("value")).removesuffix(".0")
        a = [self.expr(x, depth + 1) for x in ins.args]
        op = ins.op
        if op in ("add", "sub"):
            b = f"({a[1]})" if op == "sub" and _ops(a[1]) & {"+", "-"} else a[1]
            return f"{a[0]} {'+' if op == 'add' else '-'} {b}"
        if op in ("mul", "div"):
            x = f"({a[0]})" if _ops(a[0]) & {"+", "-"} else a[0]
            tight = {"+", "-"} if op == "mul" else {"+", "-", "*", "/", "@"}
            y = f"({a[1]})" if _ops(a[1]) & tight else a[1]
            return f"{x} {'*' if op == 'mul' else '/'} {y}"
        if op == "neg":
            return f"-({a[0]})" if _ops(a[0]) else f"-{a[0]}"
        if op == "matmul":
            return f"{a[0]} @ ({a[1]})" if _ops(a[1]) else f"{a[0]} @ {a[1]}"
        if op == "act":
            return f"{ins.attr('fn')}({a[0]})"
        if op == "clip":
            return f"clip({a[0]}, {fmt_float(ins.attr('lo'))}, {fmt_float(ins.attr('hi'))})"
        if op in ("concat", "pconcat"):
            return "[" + ("; " if op == "pconcat" else ", ").join(a) + "]"
        if op == "expand":
            return a[0]  # a (..., 1) value broadcast over the features
        if op == "sumf":
            return f"sum({a[0]})"
        if op == "slice":
            part = self.fused_part(ins)
            return part if part else f"{a[0]}[{ins.attr('lo')}:{ins.attr('hi')}]"
        return f"{op}({', '.join(a)})"

    def eq(self, name: str) -> str:
        """``f = sigmoid(...)`` for a named value, the bare expression for a temporary."""
        if name not in self.defs or _TEMP.match(name):
            return self.expr(name)
        return f"{self.name(name)} = {self.expr(name)}"

    def fused_part(self, ins: Instr) -> str | None:
        """``W_i @ x`` for a slice of ``[W_f; W_i] @ x`` that is exactly W_i's rows, and
        ``W_i @ x + b_i`` for that slice of ``[W_f; W_i] @ x + [b_f; b_i]``."""
        src = self.defs.get(ins.args[0])
        if ins.op != "slice" or src is None:
            return None
        lo, hi = ins.attr("lo"), ins.attr("hi")
        if self._fused_bias_add(src):
            bias = self._rows(src.args[1], lo, hi)
            inner = self.defs.get(src.args[0])
            is_mm = inner is not None and inner.op == "matmul"
            w = self._rows(inner.args[0], lo, hi) if is_mm else None
            term = f"{w} @ {display(inner.args[1])}" if w else f"{display(src.args[0])}[{lo}:{hi}]"
            return f"{term} + {bias}" if bias else None
        if src.op != "matmul":
            return None
        w = self._rows(src.args[0], lo, hi)
        return f"{w} @ {display(src.args[1])}" if w else None

    def _rows(self, fused: str, lo: int, hi: int) -> str | None:
        """The part of the ``pconcat`` ``fused`` that is exactly its rows lo:hi, displayed."""
        w = self.defs.get(fused)
        if w is None or w.op != "pconcat":
            return None
        at = 0
        for p in w.args:
            n = self.shapes[p][0]
            if (at, at + n) == (lo, hi):
                return display(p)
            at += n
        return None

    def _fused_bias_add(self, ins: Instr) -> bool:
        """``P + [b_1; b_2; ...]``, made by bias fusion (read through its slices)."""
        b = self.defs.get(ins.args[1]) if ins.op == "add" else None
        return b is not None and b.op == "pconcat" and len(self.shapes[b.name]) == 1

    def _fused_matmul(self, ins: Instr) -> bool:
        """A product with a fused weight (made by gate fusion, read through its slices)."""
        w = self.defs.get(ins.args[0]) if ins.op == "matmul" else None
        return w is not None and w.op == "pconcat"

    def equations(self) -> list[str]:
        """Each named value and next state as an equation, temporaries inlined."""
        out = []
        nexts = {v: s for s, v in self.cell.next_state}
        for ins in self.cell.instrs:
            if ins.op in ("const", "pconcat") or _TEMP.match(ins.name) or ins.name in nexts:
                continue
            if self.fused_part(ins) or self._fused_matmul(ins) or self._fused_bias_add(ins):
                continue
            out.append(f"{display(ins.name)} = {self.expr(ins.name)}")
        for s, v in self.cell.next_state:
            out.append(f"{s}' = {self.expr(v) if v in self.defs else display(v)}")
        if self.cell.output not in nexts:
            out.append(f"output: {display(self.cell.output)}")
        return out


def _ops(text: str) -> set[str]:
    """The binary operators at the top level of math text (outside brackets)."""
    depth, out = 0, set()
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in "+-*/@" and 0 < i < len(text) - 1 and text[i - 1] == " " \
                and text[i + 1] == " ":
            out.add(ch)
    return out


# ----------------------------------------------------------------- checks


class GradIRError(AssertionError):
    """The backward IR broke an invariant: a bug in rnnc."""


def verify_grad(grad: CellGrad) -> CellGrad:
    """Check the backward IR: SSA, what each section may read, arities and shapes."""
    cell = grad.cell

    def fail(msg: str) -> GradIRError:
        return GradIRError(f"backward IR of cell '{cell.name}': {msg}")

    shapes: dict[str, Shape] = {p.name: p.shape for p in cell.params}
    shapes.update({v.name: (v.size,) for v in cell.inputs + cell.states})
    shapes.update({i.name: i.shape for i in cell.instrs})
    fwd_kind = {p.name: "unbatched" for p in cell.params}
    fwd_kind.update({v.name: "time" for v in cell.inputs})
    fwd_kind.update({v.name: "step" for v in cell.states})
    for section, instrs in (("inv", cell.invariant), ("time", cell.hoisted), ("step", cell.body)):
        for i in instrs:
            fwd_kind[i.name] = section if i.batched else "unbatched"
    # what each backward section may read: forward kinds, then backward sections
    may_read = {
        "body": ({"unbatched", "time", "step"}, {"seed", "body"}),
        "hoisted": ({"unbatched", "time", "step"}, {"seed", "body", "hoisted"}),
        "invariant": ({"unbatched"}, {"partial", "invariant"}),
    }
    defined: dict[str, str] = {s: "seed" for s, _ in grad.seeds}
    for s, v in grad.seeds:
        shapes[s] = shapes[v]
    for section, instrs in (("body", grad.body), ("hoisted", grad.hoisted),
                            ("invariant", grad.invariant)):
        if section == "invariant":
            for _, d in grad.partials:
                defined[d] = "partial"
        fwd_ok, bwd_ok = may_read[section]
        for ins in instrs:
            if ins.op not in OPS:
                raise fail(f"unknown op '{ins.op}' in %{ins.name}")
            arity = OPS[ins.op].arity
            if arity is not None and len(ins.args) != arity:
                raise fail(f"%{ins.name} = {ins.op} takes {arity} operands")
            if ins.name in defined or ins.name in fwd_kind:
                raise fail(f"%{ins.name} is defined twice")
            for a in ins.args:
                if a in defined:
                    if defined[a] not in bwd_ok:
                        raise fail(f"%{ins.name} in {section} reads %{a} ({defined[a]})")
                elif a in fwd_kind:
                    if fwd_kind[a] not in fwd_ok:
                        raise fail(f"%{ins.name} in {section} reads forward %{a}")
                else:
                    raise fail(f"%{ins.name} reads %{a}, which is not defined before it")
            if section == "invariant" and ins.batched:
                raise fail(f"%{ins.name} in the invariant section is batched")
            sh = [shapes[a] for a in ins.args]
            if ins.op in ("add", "sub", "mul", "div"):
                sa, sb = sh
                if sa and sb and sa != sb or (sa or sb) != ins.shape:
                    raise fail(f"%{ins.name} = {ins.op} of {sa} and {sb} gives {ins.shape}")
            if ins.op == "matmul_t" and (sh[1] != (sh[0][0],) or ins.shape != (sh[0][1],)):
                raise fail(f"%{ins.name} = matmul_t of {sh[0]} and {sh[1]} gives {ins.shape}")
            if ins.op == "outer" and (ins.shape != sh[0] + sh[1] or ins.batched):
                raise fail(f"%{ins.name} = outer of {sh[0]} and {sh[1]} gives {ins.shape}")
            if ins.op == "concat" and ins.shape != (sum(s[0] for s in sh),):
                raise fail(f"%{ins.name} = concat of {sh} gives {ins.shape}")
            if ins.op in ("act_grad", "clip_grad", "zeros") and ins.shape != sh[-1]:
                raise fail(f"%{ins.name} = {ins.op} of {sh} gives {ins.shape}")
            defined[ins.name] = section
            shapes[ins.name] = ins.shape
    for what, pairs in (("state", grad.state_grads), ("input", grad.input_grads),
                        ("parameter", grad.param_grads), ("partial", grad.partials)):
        for v, d in pairs:
            if d not in shapes or shapes[d] != shapes[v]:
                raise fail(f"the adjoint of {what} %{v} is %{d} with shape {shapes.get(d)}")
    body_names = {i.name for i in grad.body} | {s for s, _ in grad.seeds}
    for e in grad.exports:
        if e not in body_names:
            raise fail(f"export %{e} is not a value of the backward body")
    for e, c, lo, hi in grad.views:
        if e not in grad.exports or c not in grad.exports or hi - lo != shapes[e][0]:
            raise fail(f"view %{e} = %{c}[{lo}:{hi}] is inconsistent")
    return grad


# ---------------------------------------------------------------- printing


def grad_str(grad: CellGrad) -> str:
    """The backward IR as text (the style of :mod:`rnnc.ir.printer`)."""
    from rnnc.ir.printer import instr_str

    def pairs(ps, arrow):
        return ", ".join(f"%{a} {arrow} %{b}" for a, b in ps)

    lines = [f"grad {grad.cell.name}", "  seeds " + pairs(grad.seeds, "->")]
    if grad.body:
        lines.append("  body (per step, reversed):")
        lines += [f"    {instr_str(i)}" for i in grad.body]
    lines.append("  state grads " + pairs(grad.state_grads, "<-"))
    lines.append("  saved per step " + ", ".join(f"%{s}" for s in grad.saved)
                 + "; stacked " + ", ".join(f"%{s}" for s in grad.stacked))
    if grad.exports:
        lines.append("  exports " + ", ".join(f"%{s}" for s in grad.exports))
    if grad.views:
        lines.append("  views " + ", ".join(f"%{e} = %{c}[{lo}:{hi}]"
                                              for e, c, lo, hi in grad.views))
    if grad.hoisted:
        lines.append("  hoisted (all steps):")
        lines += [f"    {instr_str(i)}" for i in grad.hoisted]
    lines.append("  input grads " + pairs(grad.input_grads, "<-"))
    if grad.invariant:
        lines.append("  invariant (once):")
        lines += [f"    {instr_str(i)}" for i in grad.invariant]
    lines.append("  param grads " + pairs(grad.param_grads, "<-"))
    return "\n".join(lines)
