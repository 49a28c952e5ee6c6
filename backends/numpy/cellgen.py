"""Source text for one cell: its forward step, its backward step and the time loops.

For a cell with function prefix ``P`` (the cell's name) the generated functions are

``P_prepare(p, xs)``
    the invariant section (parameters only) and the hoisted section (every step
    at once, ``(T, B, n)``), collected with the parameters in a dict ``k``;
``P_step(k, t, *state, tape=None)``
    one step forward, one line per body instruction;
``P_backward_step(k, tape, t, *seeds)``
    one step back, one line per backward-body instruction;
``P_backward_hoisted(k, tape, s, e, acc, need_dx)``
    after the loop, over steps ``s:e`` at once: input adjoints, and the
    adjoints of parameters and invariants summed into ``acc`` (one big matmul
    per weight: the hoisted weight gradients);
``P_backward_invariant(k, acc)``
    once: parameter gradients from the summed adjoints;
``P_forward`` / ``P_backward``
    the time loops, with resets, padding and the tape.

Inside the loops arrays are time-major, ``(T, B, n)``, so each step reads
contiguous rows; the hoisted IR values (``(B, T, n)`` in the IR's terms) are
the same arrays with the axes swapped, which element-wise ops, feature slices
and ``v @ W.T`` do not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rnnc.ir.nodes import Cell, Instr
from rnnc.ir.ops import ACT_FORWARD, ACT_GRAD, ACT_MATH, fmt_float, render
from rnnc.ir.passes.autodiff import CellGrad, IRMath, autodiff, verify_grad

from ..pyfmt import INDENT, WIDTH, Namer, call, docstring, with_comment


I1, I2, I3 = INDENT, INDENT * 2, INDENT * 3

# NumPy renderings that differ from the shared op table (same math): stacked (T, B, n)
# matmuls as one 2-D product, bsum over the two leading axes, row slices of fused
# parameters, and hard_sigmoid' without a float64 temporary (0.2 * bool array would be
# float64). (sigmoid stays 0.5 (1 + tanh(x / 2)): measured against 1 / (1 + exp(-x))
# it was as fast or faster, and it cannot overflow.)
NP_ACT_FORWARD = dict(ACT_FORWARD)
NP_ACT_GRAD = dict(ACT_GRAD, hard_sigmoid="{g} * 0.2 * (({y} > 0.0) & ({y} < 1.0))")


def _act(xp, a, ins):
    return NP_ACT_FORWARD[ins.attr("fn")].format(xp=xp, a=a[0])


def _act_grad(xp, a, ins):
    return NP_ACT_GRAD[ins.attr("fn")].format(xp=xp, y=a[0], g=a[1])


def _slice(xp, a, ins):
    lo, hi = ins.attr("lo"), ins.attr("hi")
    if ins.attr("axis") == 0:
        return f"{a[0]}[{lo}:{hi}]"
    return f"{a[0]}[..., {lo}:{hi}]"


STEP_OPS = {"act": _act, "act_grad": _act_grad, "slice": _slice}
STACK_OPS = dict(
    STEP_OPS,
    matmul=lambda xp, a, ins: f"_matmul({a[1]}, {a[0]}.T)",
    matmul_t=lambda xp, a, ins: f"_matmul({a[1]}, {a[0]})",
    bsum=lambda xp, a, ins: f"{a[0]}.sum(axis=(0, 1))",
)

LOCALS = {
    "k", "t", "tape", "s", "e", "acc", "need_dx", "p", "xs", "T", "B", "ys", "state",
    "keep", "valid", "reverse", "dys", "dtype", "dx", "np", "math", "grads",
}


class CellCode:
    """Generated functions of one cell (see the module docstring).

    Subclasses for another array namespace set ``XP``, ``STEP_OPS``, ``STACK_OPS`` and
    ``LOCALS`` (the JAX backend's whole-sequence custom VJP does).
    """

    XP = "np"
    STEP_OPS = STEP_OPS
    STACK_OPS = STACK_OPS
    LOCALS = LOCALS

    def __init__(self, cell: Cell, prefix: str, grad: CellGrad | None = None):
        self.cell = cell
        self.grad = grad if grad is not None else verify_grad(autodiff(cell))
        self.fn = prefix
        self.fns = {f: f"{prefix}_{f}" for f in (
            "prepare", "step", "backward_step", "backward_hoisted", "backward_invariant",
            "forward", "backward")}
        self.names = Namer(self.LOCALS | set(self.fns.values()))
        self.defs: dict[str, Instr] = {i.name: i for i in cell.instrs}
        self.consts = {i.name: fmt_float(i.attr("value")) for i in cell.instrs if i.op == "const"}
        self.params = {p.name for p in cell.params}
        self.inputs = {v.name for v in cell.inputs}
        self.states = [v.name for v in cell.states]
        # values computed once per call (k): parameters, unbatched instructions, hoisted
        self.unbatched = [i for i in cell.instrs if not i.batched and i.op != "const"]
        self.hoisted = [i for i in cell.hoisted if i.batched]
        self.body = [i for i in cell.body if i.batched]
        self.k_names = self.params | {i.name for i in self.unbatched} | {
            i.name for i in self.hoisted} | self.inputs
        self.time_names = self.inputs | {i.name for i in self.hoisted}
        g = self.grad
        self.exports = list(g.exports)
        self.view_of = {e: (c, lo, hi) for e, c, lo, hi in g.views}
        self.saved = list(dict.fromkeys(list(g.saved) + list(g.stacked)))
        self.stacked = set(g.stacked)
        self.texts = IRMath(cell)

    # -- names
    def nm(self, name: str) -> str:
        if name in self.consts:
            v = self.consts[name]
            return f"({v})" if v.startswith("-") else v
        return self.names(name)

    def size(self, name: str) -> int:
        for v in self.cell.inputs + self.cell.states:
            if v.name == name:
                return v.size
        g = self.grad
        for s, v in g.seeds:
            if s == name:
                return self.size(v)
        for i in self.cell.instrs + g.body + g.hoisted + g.invariant:
            if i.name == name:
                return i.shape[0]
        raise KeyError(name)

    # -- math text for comments and docstrings
    def math(self, name: str) -> str:
        return self.texts.expr(name)

    def equations(self) -> list[str]:
        return self.texts.equations()

    def comment(self, ins: Instr) -> str:
        """Short math for a forward line: ``f = sigmoid(...)`` or the value as an expression."""
        return self.texts.eq(ins.name)

    # -- emission helpers
    def line(self, ins: Instr, ops: dict, comment: str, indent: str = I1) -> list[str]:
        code = f"{self.nm(ins.name)} = {render(ins, self.XP, self.nm, ops)}"
        return with_comment(code, comment, indent)

    def load(self, out: list[str], name: str, src: str, indent: str = I1) -> None:
        out.append(f"{indent}{self.nm(name)} = {src}")

    def load_reads(self, out: list[str], instrs: Sequence[Instr], time_src: str,
                   saved_src: str | None = None) -> None:
        """Load every name ``instrs`` read, in order of first use: saved values from
        ``saved_src``, time-indexed ones from ``time_src`` (format strings of ``{a}``, the
        name, and ``{i}``, its index among the saved), the rest from ``k``."""
        for a in _ordered(a for i in instrs for a in i.args):
            if saved_src is not None and a in self.saved:
                self.load(out, a, saved_src.format(a=a, i=self.saved.index(a)))
            elif a in self.time_names:
                self.load(out, a, time_src.format(a=a))
            elif a in self.k_names:
                self.load(out, a, f'k["{a}"]')

    # -- functions
    def prepare(self) -> list[str]:
        c = self.cell
        x = c.inputs[0].name
        out = call(f"def {self.fns['prepare']}", ["p", "xs"], tail=":")
        doc = (f"{c.name} outside the time loop: loop invariants and hoisted values.\n\n"
               f"p: the parameters by symbol; xs (T, B, {c.inputs[0].size}): every input. "
               "Returns k: the\nparameters, the inputs, the invariants (parameters only) and "
               "the hoisted values\n(inputs and parameters only, every step at once: (T, B, n)).")
        out += docstring(doc, I1)
        reads = _ordered(a for i in self.unbatched + self.hoisted for a in i.args
                         if a in self.params)
        for a in reads:
            self.load(out, a, f'p["{a}"]')
        if any(a == x for i in self.hoisted for a in i.args):
            self.load(out, x, "xs")
        if self.unbatched:
            out.append(f"{I1}# loop invariants: parameters only, once per call")
            for ins in self.unbatched:
                out += self.line(ins, self.STEP_OPS, self.comment(ins))
        if self.hoisted:
            out.append(f"{I1}# hoisted: inputs and parameters only, every step at once")
            for ins in self.hoisted:
                out += self.line(ins, self.STACK_OPS, self.comment(ins))
        out.append(f"{I1}k = dict(p)")
        out.append(f'{I1}k["{x}"] = xs')
        for ins in self.unbatched + self.hoisted:
            out.append(f'{I1}k["{ins.name}"] = {self.nm(ins.name)}')
        out.append(f"{I1}return k")
        return out

    def step(self) -> list[str]:
        c = self.cell
        st = [self.nm(s) for s in self.states]
        out = call(f"def {self.fns['step']}", ["k", "t", *st, "tape=None"], tail=":")
        eqs = "\n".join(I1 + e for e in self.equations())
        doc = (f"{c.name}, one step forward from the state entering step t.\n\n{eqs}\n\n"
               "Returns the next state and the output. A dict `tape` receives what "
               f"{self.fns['backward_step']}\nreads.")
        out += docstring(doc, I1)
        self.load_reads(out, [*self.body, self.step_returns()], 'k["{a}"][t]')
        for ins in self.body:
            out += self.line(ins, self.STEP_OPS, self.comment(ins))
        if self.saved:
            out.append(f"{I1}if tape is not None:  # what the backward step reads")
            for a in self.saved:
                out.append(f'{I2}tape["{a}"][t] = {self.nm(a)}')
        nxt = dict(c.next_state)
        new = ", ".join(self.nm(nxt[s]) for s in self.states)
        if len(self.states) == 1:
            new += ","
        out.append(f"{I1}return ({new}), {self.nm(c.output)}")
        return out

    def step_returns(self) -> _Reads:
        """What a step returns or tapes, as a read: a next state, output or saved value no
        step instruction computes or reads (`h' = x`; `h' = tanh(W @ x)`, all hoisted) is
        loaded like an instruction's argument (it was an undefined name)."""
        nxt = dict(self.cell.next_state)
        return _Reads("return", (*(nxt[s] for s in self.states), self.cell.output,
                                 *self.saved))

    def backward_step(self) -> list[str]:
        c, g = self.cell, self.grad
        seeds = [self.nm(d) for _, d in g.state_seeds] + [self.nm(g.output_seed)]
        out = call(f"def {self.fns['backward_step']}", ["k", "tape", "t", *seeds], tail=":")
        st = ", ".join(f"{s}'" for s in self.states)
        doc = (f"{c.name}, one step back in time: {self.fns['step']} reversed, line by line.\n\n"
               f"From the adjoints of ({st}) and of the step's output, the adjoints of the "
               f"state\nentering step t. Stores what {self.fns['backward_hoisted']} reads "
               "in the tape.")
        out += docstring(doc, I1)
        self.load_reads(out, g.body, 'k["{a}"][t]', 'tape["{a}"][t]')
        for ins in g.body:
            out += self.line(ins, self.STEP_OPS, self.grad_comment(ins))
        for e in self.exports:
            if e not in self.view_of:
                out.append(f'{I1}tape["{e}"][t] = {self.nm(e)}')
        out.append(f"{I1}return {_tuple([self.nm(d) for _, d in g.state_grads])}")
        return out

    def grad_comment(self, ins: Instr) -> str:
        return ins.comment

    def backward_hoisted(self) -> list[str]:
        c, g = self.cell, self.grad
        out = call(f"def {self.fns['backward_hoisted']}",
                   ["k", "tape", "s", "e", "acc", "need_dx=True"], tail=":")
        doc = (f"{c.name} after the time loop, for steps s:e at once (stacks (e - s, B, n)).\n\n"
               "Sums the adjoints of the parameters and loop invariants into acc (each weight\n"
               "gradient is one matmul over all the steps) and returns the adjoint of the\n"
               "inputs at steps s:e (None unless need_dx).")
        out += docstring(doc, I1)
        # instructions needed for acc, then those only needed for the input adjoints
        partial_roots = {d for _, d in g.partials}
        for_acc = _live(g.hoisted, partial_roots)
        for_dx = _live(g.hoisted, {d for _, d in g.input_grads}) - for_acc
        first = [i for i in g.hoisted if i.name in for_acc]
        second = [i for i in g.hoisted if i.name in for_dx]
        bwd_body = {i.name for i in g.body} | {s for s, _ in g.seeds}

        def loads(instrs: Sequence[Instr], extra: Sequence[str], indent: str, done: set[str]):
            names = _ordered([a for i in instrs for a in i.args] + list(extra))
            lines = []
            for a in names:
                if a in done or a in self.consts or a in {i.name for i in g.hoisted}:
                    continue
                done.add(a)
                if a in bwd_body or a in self.saved:
                    lines.append(f'{indent}{self.nm(a)} = tape["{a}"][s:e]')
                elif a in self.time_names:
                    lines.append(f'{indent}{self.nm(a)} = k["{a}"][s:e]')
                elif a in self.k_names:
                    lines.append(f'{indent}{self.nm(a)} = k["{a}"]')
            return lines

        done: set[str] = set()
        out += loads(first, [d for _, d in g.partials], I1, done)
        for ins in first:
            out += self.line(ins, self.STACK_OPS, ins.comment)
        for v, d in g.partials:
            out.append(f'{I1}_accumulate(acc, "{v}", {self.nm(d)})')
        out.append(f"{I1}if not need_dx:")
        out.append(f"{I2}return None")
        out += loads(second, [d for _, d in g.input_grads], I1, done)
        for ins in second:
            out += self.line(ins, self.STACK_OPS, ins.comment)
        (_, dx), = g.input_grads
        out.append(f"{I1}return {self.nm(dx)}")
        return out

    def backward_invariant(self) -> list[str]:
        c, g = self.cell, self.grad
        out = call(f"def {self.fns['backward_invariant']}", ["k", "acc"], tail=":")
        doc = (f"{c.name}, once: the parameter gradients from the adjoints summed in acc\n"
               "(over every step and truncated-BPTT window).")
        out += docstring(doc, I1)
        partial = {d: v for v, d in g.partials}
        names = _ordered([a for i in g.invariant for a in i.args] + [d for _, d in g.param_grads])
        defined = {i.name for i in g.invariant}
        for a in names:
            if a in partial:
                self.load(out, a, f'acc["{partial[a]}"]')
            elif a in self.k_names and a not in defined:
                self.load(out, a, f'k["{a}"]')
        for ins in g.invariant:
            out += self.line(ins, self.STEP_OPS, ins.comment)
        items = [f'"{p}": {self.nm(d)}' for p, d in g.param_grads]
        out += _dict_return(items)
        return out

    def forward(self) -> list[str]:
        c = self.cell
        n_in, n_out = c.inputs[0].size, c.output_size
        sig = "p, xs, state, keep=None, valid=None, reverse=False, tape=None"
        out = call(f"def {self.fns['forward']}", sig.split(", "), tail=":")
        doc = (f"Run {c.name} over xs (T, B, {n_in}) from state ({', '.join(self.states)}).\n\n"
               f"Returns the outputs (T, B, {n_out}) and the final state. keep (T, B, 1) is 0.0 "
               "where a\nrow's state is zeroed before step t (a reset); valid (T, B, 1) is False "
               "at padded\nsteps, where the state carries over. reverse runs t = T-1 ... 0. A "
               f"dict `tape`\nreceives what {self.fns['backward']} reads.")
        out += docstring(doc, I1)
        out.append(f"{I1}T, B = xs.shape[0], xs.shape[1]")
        out.append(f"{I1}k = {self.fns['prepare']}(p, xs)")
        out.append(f"{I1}ys = np.empty((T, B, {n_out}), dtype=xs.dtype)")
        out.append(f"{I1}if tape is not None:  # what {self.fns['backward']} reads")
        out.append(f'{I2}tape["k"] = k')
        for a in self.saved:
            if a in self.stacked:
                out.append(f'{I2}tape["{a}"] = np.empty((T, B, {self.size(a)}), dtype=xs.dtype)')
            else:
                out.append(f'{I2}tape["{a}"] = [None] * T')
        for e in self.exports:
            if e not in self.view_of:
                out.append(f'{I2}tape["{e}"] = np.empty((T, B, {self.size(e)}), dtype=xs.dtype)')
        for e in self.exports:
            if e in self.view_of:
                cc, lo, hi = self.view_of[e]
                out.append(f'{I2}tape["{e}"] = tape["{cc}"][..., {lo}:{hi}]')
        # the time loop, with the states by name (as a tuple when the names are long)
        st = [self.nm(s) for s in self.states]
        new = [self.names.fresh(f"{x}_new") for x in st]
        loop = [f"{I1}{_tuple(st)} = state",
                f"{I1}for t in reversed(range(T)) if reverse else range(T):",
                f"{I2}if keep is not None:  # a reset: this row starts again from zero"]
        loop += [f"{I3}{x} = {x} * keep[t]" for x in st]
        target = _tuple(new) if len(new) == 1 else f"({', '.join(new)})"
        loop += call(f"{I2}{target}, ys[t] = {self.fns['step']}", ["k", "t", *st, "tape"])
        loop.append(f"{I2}if valid is not None:  # padded steps keep the state")
        loop += [f"{I3}{n} = np.where(valid[t], {n}, {x})" for n, x in zip(new, st, strict=True)]
        loop.append(f"{I2}{', '.join(st)} = {', '.join(new)}")
        loop.append(f"{I1}return ys, {_paren(st)}")
        if max(len(x) for x in loop) > WIDTH:
            loop = [
                f"{I1}for t in reversed(range(T)) if reverse else range(T):",
                f"{I2}if keep is not None:  # a reset: this row starts again from zero",
                f"{I3}state = tuple(v * keep[t] for v in state)",
                *call(f"{I2}new, ys[t] = {self.fns['step']}", ["k", "t", "*state", "tape"]),
                f"{I2}if valid is not None:  # padded steps keep the state",
                f"{I3}new = tuple(np.where(valid[t], n, v) "
                "for n, v in zip(new, state, strict=True))",  # 90 columns: one line
                f"{I2}state = new",
                f"{I1}return ys, state",
            ]
        return out + loop

    def backward(self) -> list[str]:
        c = self.cell
        sig = "tape, dys, s, e, keep=None, valid=None, reverse=False, acc=None, need_dx=True"
        out = call(f"def {self.fns['backward']}", sig.split(", "), tail=":")
        doc = (f"Backpropagate through steps s..e-1 of {self.fns['forward']}, the latest first."
               "\n\n"
               f"dys (e - s, B, {c.output_size}): the adjoints of the outputs at those steps. "
               "The adjoint of\nthe state after the window is zero: later losses belong to "
               "later windows. Sums the\nadjoints of parameters and invariants into acc and "
               "returns the adjoint of xs[s:e]\n(None unless need_dx) and of the state "
               "entering step s.")
        out += docstring(doc, I1)
        out.append(f'{I1}k = tape["k"]')
        out.append(f"{I1}B, dtype = dys.shape[1], dys.dtype")
        sizes = [v.size for v in c.states]
        ds = [self.names.fresh(f"d{self.nm(s)}") for s in self.states]
        skip = [self.names.fresh(f"{d}_skip") for d in ds]
        loop = [f"{I1}{d} = np.zeros((B, {n}), dtype=dtype)" for d, n in zip(ds, sizes,
                                                                            strict=True)]
        loop.append(f"{I1}for t in range(s, e) if reverse else reversed(range(s, e)):")
        loop.append(f"{I2}if valid is not None:  # a padded step passed the state through")
        for d, sk in zip(ds, skip, strict=True):
            loop.append(f"{I3}{sk} = np.where(valid[t], 0.0, {d})")
            loop.append(f"{I3}{d} = np.where(valid[t], {d}, 0.0)")
        loop += call(f"{I2}{_tuple(ds)} = {self.fns['backward_step']}",
                     ["k", "tape", "t", *ds, "dys[t - s]"])
        loop.append(f"{I2}if valid is not None:")
        loop += [f"{I3}{d} = {d} + {sk}" for d, sk in zip(ds, skip, strict=True)]
        loop.append(f"{I2}if keep is not None:  # a reset cut the state off from earlier steps")
        loop += [f"{I3}{d} = {d} * keep[t]" for d in ds]
        result = _paren(ds)
        if max(len(x) for x in loop) > WIDTH:  # long state names: a tuple of adjoints
            loop = [
                f"{I1}ds = tuple(np.zeros((B, n), dtype=dtype) for n in "
                f"{_paren([str(n) for n in sizes])})",
                f"{I1}for t in range(s, e) if reverse else reversed(range(s, e)):",
                f"{I2}if valid is not None:  # a padded step passed the state through",
                f"{I3}skip = tuple(np.where(valid[t], 0.0, d) for d in ds)",
                f"{I3}ds = tuple(np.where(valid[t], d, 0.0) for d in ds)",
                *call(f"{I2}ds = {self.fns['backward_step']}",
                      ["k", "tape", "t", "*ds", "dys[t - s]"]),
                f"{I2}if valid is not None:",
                f"{I3}ds = tuple(d + d_skip for d, d_skip in zip(ds, skip, strict=True))",
                f"{I2}if keep is not None:  # a reset cut the state off from earlier steps",
                f"{I3}ds = tuple(d * keep[t] for d in ds)",
            ]
            result = "ds"
        out += loop
        out.append(f"{I1}dx = {self.fns['backward_hoisted']}(k, tape, s, e, acc, need_dx)")
        out.append(f"{I1}return dx, {result}")
        return out

    def source(self) -> list[str]:
        out: list[str] = []
        for f in (self.prepare, self.step, self.forward, self.backward_step,
                  self.backward_hoisted, self.backward, self.backward_invariant):
            out += ["", ""] + f()
        return out


def _tuple(names: Sequence[str]) -> str:
    """A tuple target/value as ruff writes it: ``a, b`` or ``(a,)``."""
    return f"({names[0]},)" if len(names) == 1 else ", ".join(names)


def _paren(names: Sequence[str]) -> str:
    """A tuple display: ``(a,)`` or ``(a, b)``."""
    return f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"


def _dict_return(items: list[str]) -> list[str]:
    one = f"{I1}return {{{', '.join(items)}}}"
    if len(one) <= 100:
        return [one]
    return [f"{I1}return {{"] + [f"{I2}{i}," for i in items] + [f"{I1}}}"]


class _Reads(NamedTuple):
    """A stand-in instruction for :meth:`CellGen.load_reads`: only reads ``args``."""

    op: str
    args: tuple[str, ...]


def _ordered(names) -> list[str]:
    return list(dict.fromkeys(names))


def _live(instrs: Sequence[Instr], roots: set[str]) -> set[str]:
    live = set(roots)
    out = set()
    for ins in reversed(instrs):
        if ins.name in live:
            out.add(ins.name)
            live.update(ins.args)
    return out


ACT_NAMES = ACT_MATH  # re-exported for docstrings
