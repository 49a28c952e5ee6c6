"""A cell's whole-sequence custom VJP for the JAX backend: the NumPy backend's BPTT in jnp.

Autodiff through ``lax.scan`` saves every intermediate of every step (a dozen
``(T, B, H)`` stacks for an LSTM, each zero-filled on every call), and
accumulates each recurrent weight gradient inside the backward loop: one small
``(H, B) @ (B, 4H)`` product and one read-modify-write of the whole ``(H, 4H)``
gradient per step. The generated code here runs the backward pass that
:mod:`rnnc.ir.passes.autodiff` derives instead, the one the NumPy backend runs:
the forward step saves only what the backward step reads, the backward step
exports the adjoints of the hoisted values, and after the loop every weight
gradient is one ``(H, T*B) @ (T*B, 4H)`` product (hoisted weight gradients).
``template.py``'s ``_vjp_sequence`` wraps these functions in a
``jax.custom_vjp`` over the whole sequence. ``bench/bench_all.py`` measures it
against autodiff through ``scan`` (its ``rnnc-jax-scan`` rows).

For a cell with function prefix ``P`` (``<layer>_<cell>_vjp``):

``P_prepare(p, xs)``
    invariants and hoisted values in a dict ``k`` (the NumPy backend's prepare);
``P_step(k, kt, *state)``
    one step forward: ``[next state], output, [saved values]``; ``kt`` holds the
    time-indexed values of ``k`` at this step;
``P_backward_step(k, kt, sv, *seeds)``
    one step back: ``[adjoints of the state entering the step], [exports]``;
    ``sv`` holds the values the forward step saved (in ``CELLS[...]["vjp"]["saved"]``
    order, the exports in ``["exports"]`` order);
``P_backward_hoisted`` / ``P_backward_invariant``
    after the loop: the input adjoints and the parameter gradients (NumPy's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rnnc.ir.nodes import Cell, Instr
from rnnc.ir.ops import ACT_FORWARD, ACT_GRAD, OPS
from rnnc.ir.passes.autodiff import CellGrad

from ..numpy.cellgen import (
    I1,
    LOCALS,
    STACK_OPS,
    CellCode,
    _ordered,
    _slice,
)
from ..pyfmt import WIDTH, Seq, call, docstring, with_comment


JAX_ACT_FORWARD = dict(ACT_FORWARD, sigmoid="jax.nn.sigmoid({a})", relu="jax.nn.relu({a})")


def _act(xp: str, a: Sequence[str], ins: Instr) -> str:
    return JAX_ACT_FORWARD[ins.attr("fn")].format(xp=xp, a=a[0])


def _act_grad(xp: str, a: Sequence[str], ins: Instr) -> str:
    return ACT_GRAD[ins.attr("fn")].format(xp=xp, y=a[0], g=a[1])


JAX_STEP_OPS = {"act": _act, "act_grad": _act_grad, "slice": _slice}
JAX_STACK_OPS = dict(STACK_OPS, **JAX_STEP_OPS)

# Helpers the generated functions call (pasted once into a module that uses them).
HELPERS = '''
def _matmul(a, b):
    """a @ b for a 2-D b; a stacked (T, B, n) a is multiplied as one (T * B, n) matrix,
    lazy token ids (_Tokens) as the rows of b they pick."""
    if isinstance(a, _LAZY):
        return a.times(b)
    if a.ndim <= 2:
        return a @ b
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))


def _accumulate(acc, name, value):
    """acc[name] += value, where the first value is stored as it is."""
    acc[name] = value if name not in acc else acc[name] + value
'''


# Helpers of the feature-major step functions (pasted into a module that has them).
FM_HELPERS = '''
def _concat_rows(parts):
    """jnp.concatenate(parts, axis=0) of feature-major values, written block by block into
    one buffer: XLA fuses a concatenation along the major axis with the work that makes
    its parts into one slow loop (the backward's gate adjoints: 60-110 us per step at
    B = 32), block writes stay separate, fast fusions."""
    out = jnp.zeros((sum(p.shape[0] for p in parts),) + parts[0].shape[1:], parts[0].dtype)
    lo = 0
    for p in parts:
        out = jax.lax.dynamic_update_slice_in_dim(out, p, lo, axis=0)
        lo += p.shape[0]
    return out
'''


# Hoisted instructions cheap enough to recompute inside the loop (see sink_cheap_hoisted).
SINKABLE = frozenset({"slice", "add", "sub", "mul", "neg"})


def sink_cheap_hoisted(cell: Cell) -> Cell:
    """Move slices and element-wise ops of the hoisted section into the step.

    ``fuse_gates`` and ``reassociate`` leave ``x_proj = Wcat_x x`` for every step and,
    after it, one slice and one bias add per gate: each a fresh (T, B, H) array written
    once and read once. Computed in the step instead, they fuse with the step's other
    element-wise work and the loop reads one (B, 4H) row of ``x_proj`` per step. Only
    instructions whose every use is in the step (or is itself moved) move; the
    backward pass follows, since autodiff runs on the moved cell.
    """
    body_uses = {a for i in cell.body for a in i.args}
    ends = {cell.output} | {v for _, v in cell.next_state}
    moved: list[Instr] = []
    kept: list[Instr] = []
    users: dict[str, set[str]] = {}
    for i in cell.hoisted:
        for a in i.args:
            users.setdefault(a, set()).add(i.name)
    moved_names: set[str] = set()
    for i in reversed(cell.hoisted):
        own_users = users.get(i.name, set())
        if (
            i.op in SINKABLE
            and i.name not in ends
            and own_users <= moved_names
            and (i.name in body_uses or own_users)
        ):
            moved.append(i)
            moved_names.add(i.name)
        else:
            kept.append(i)
    if not moved:
        return cell
    return cell.with_sections(hoisted=kept[::-1], body=moved[::-1] + list(cell.body))


# Saved values cheap enough to recompute in the backward pass (see remat_cheap_saved).
REMAT = frozenset({"add", "sub", "mul", "neg"})


def remat_cheap_saved(grad: CellGrad) -> CellGrad:
    """Recompute in the backward pass the saved values that are one add/sub/mul/neg of
    other saved values, constants and parameters (``1 - z`` in a GRU, ``f * h`` in an
    MGU), instead of saving them: one (T, B, n) stack fewer each, for a multiply in the
    backward step (or over the stacks after the loop, for the weight gradients).
    """
    cell = grad.cell
    defs = {i.name: i for i in cell.body}
    fixed = {p.name for p in cell.params} | {i.name for i in cell.instrs if not i.batched}
    saved = list(dict.fromkeys(grad.saved + grad.stacked))
    remat: dict[str, Instr] = {}
    for name in saved:
        ins = defs.get(name)
        if (
            ins is not None
            and ins.op in REMAT
            and all(a in fixed or (a in saved and a not in remat) for a in ins.args)
            and not any(name in r.args for r in remat.values())  # inputs stay saved
        ):
            remat[name] = ins
    if not remat:
        return grad

    def needed(instrs: Sequence[Instr]) -> list[Instr]:
        names = {a for i in instrs for a in i.args}
        return [ins for name, ins in remat.items() if name in names]

    return replace(
        grad,
        saved=tuple(s for s in grad.saved if s not in remat),
        stacked=tuple(s for s in grad.stacked if s not in remat),
        body=(*needed(grad.body), *grad.body),
        hoisted=(*needed(grad.hoisted), *grad.hoisted),
    )


class VjpCellCode(CellCode):
    """The functions of one cell's whole-sequence VJP (see the module docstring)."""

    XP = "jnp"
    STEP_OPS = JAX_STEP_OPS
    STACK_OPS = JAX_STACK_OPS
    LOCALS = LOCALS | {"kt", "sv", "jnp", "jax", "functools"}

    def step(self) -> list[str]:
        c = self.cell
        st = [self.nm(s) for s in self.states]
        out = call(f"def {self.fns['step']}", ["k", "kt", *st], tail=":")
        doc = (
            f"{c.name}, one step forward: (next state), output, and the values that\n"
            f"{self.fns['backward_step']} reads."
        )
        out += docstring(doc, I1)
        self.load_reads(out, [*self.body, self.step_returns()], 'kt["{a}"]')
        for ins in self.body:
            out += self.line(ins, self.STEP_OPS, self.comment(ins))
        nxt = dict(c.next_state)
        new = Seq([self.nm(nxt[s]) for s in self.states])
        return out + _return([new, self.nm(c.output), Seq([self.nm(a) for a in self.saved])])

    def backward_step(self) -> list[str]:
        c, g = self.cell, self.grad
        seeds = [self.nm(d) for _, d in g.state_seeds] + [self.nm(g.output_seed)]
        out = call(f"def {self.fns['backward_step']}", ["k", "kt", "sv", *seeds], tail=":")
        doc = (
            f"{c.name}, one step back in time: {self.fns['step']} reversed, line by line.\n\n"
            "Returns the adjoints of the state entering the step and the adjoints that\n"
            f"{self.fns['backward_hoisted']} reads."
        )
        out += docstring(doc, I1)
        self.load_reads(out, g.body, 'kt["{a}"]', "sv[{i}]")
        for ins in g.body:
            out += self.line(ins, self.STEP_OPS, self.grad_comment(ins))
        grads = Seq([self.nm(d) for _, d in g.state_grads])
        return out + _return([grads, Seq([self.nm(e) for e in self.stacked_exports])])

    @property
    def stacked_exports(self) -> list[str]:
        """The backward step's exports that are stacked over time (not views of another)."""
        return [e for e in self.exports if e not in self.view_of]

    def entry(self) -> dict[str, object]:
        """The CELLS["vjp"] table: the functions, the time-indexed names and the views."""
        return {
            "prepare": self.fns["prepare"],
            "step": self.fns["step"],
            "backward_step": self.fns["backward_step"],
            "backward_hoisted": self.fns["backward_hoisted"],
            "backward_invariant": self.fns["backward_invariant"],
            "time": tuple(
                _ordered(
                    a
                    for i in [*self.body, self.step_returns(), *self.grad.body]
                    for a in i.args
                    if a in self.time_names
                )
            ),
            "saved": tuple(self.saved),
            "exports": tuple(self.stacked_exports),
            "views": dict(self.view_of),
        }

    def source(self) -> list[str]:
        out: list[str] = []
        for f in (
            self.prepare,
            self.step,
            self.backward_step,
            self.backward_hoisted,
            self.backward_invariant,
        ):
            out += ["", ""] + f()
        return out


def _fm_slice(xp: str, a: Sequence[str], ins: Instr) -> str:
    return f"{a[0]}[{ins.attr('lo')}:{ins.attr('hi')}]"


# Feature-major renderings (a batched value is (n, B); see FeatureMajorVjpCode, which
# renders matmul_t itself: its weight is read as the transpose made outside the loop).
FM_STEP_OPS = dict(
    JAX_STEP_OPS,
    matmul=lambda xp, a, ins: f"{a[0]} @ {a[1]}",
    concat=lambda xp, a, ins: f"_concat_rows([{', '.join(a)}])",
    slice=_fm_slice,
    expand=lambda xp, a, ins: f"jnp.broadcast_to({a[0]}, ({ins.attr('n')},) + {a[0]}.shape[1:])",
    sumf=lambda xp, a, ins: f"{a[0]}.sum(axis=0, keepdims=True)",
    pad=lambda xp, a, ins: f"jnp.pad({a[0]}, [({ins.attr('lo')}, {ins.attr('after')}), (0, 0)])",
)
# Ops a step may hold in either layout (outer, bsum and pconcat only run outside the loop).
FM_OPS = frozenset(FM_STEP_OPS) | frozenset(
    op for op, d in OPS.items() if d.elementwise or op in ("const", "zeros", "matmul_t")
)


class FeatureMajorVjpCode(VjpCellCode):
    """The step functions of :class:`VjpCellCode` with the batch as the last axis.

    Inside the loop every batched value is ``(n, B)`` instead of ``(B, n)``: the
    recurrent products become ``W @ h`` of an ``(m, n)`` weight by an ``(n, B)`` state,
    which XLA's CPU dot runs well above the rate of ``h @ W.T`` for a small batch
    (``docs/performance.md``: 159 against 106 GFLOP/s for 32 x 512 by 512 x 2048), and
    the backward's ``W.T @ g`` reads a transpose made once outside the loop (``k`` holds
    it under ``"<name>.T"``). Parameter vectors are read as ``(n, 1)`` columns. The
    template transposes the state, the time-indexed values and the outputs at the loop's
    edges; the saved values stay ``(T, n, B)`` between the two loops.
    """

    def __init__(self, cell: Cell, prefix: str, grad: CellGrad):
        super().__init__(cell, prefix, grad)
        self.fns["step"] = f"{prefix}_step_fm"
        self.fns["backward_step"] = f"{prefix}_backward_step_fm"
        self.names.reserved |= {self.fns["step"], self.fns["backward_step"]}
        shapes = {p.name: p.shape for p in cell.params}
        shapes.update((i.name, i.shape) for i in self.unbatched)
        self.columns = {n for n, sh in shapes.items() if len(sh) == 1}
        # weights the backward step multiplies transposed, and their transposes' locals
        self.transposed = _ordered(i.args[0] for i in self.grad.body if i.op == "matmul_t")
        self.tname = {w: self.names.fresh(f"{self.nm(w)}_T") for w in self.transposed}
        self.STEP_OPS = dict(FM_STEP_OPS, matmul_t=self._matmul_t)

    def _matmul_t(self, xp: str, a: Sequence[str], ins: Instr) -> str:
        return f"{self.tname[ins.args[0]]} @ {a[1]}"

    @staticmethod
    def supports(cell: Cell, grad: CellGrad) -> bool:
        """Whether every batched op of the step and the backward step has a rendering."""
        return all(i.op in FM_OPS for i in [*cell.body, *grad.body] if i.batched)

    def load_reads(self, out, instrs, time_src, saved_src=None):
        only_t = {
            w
            for w in self.transposed
            if all(i.op == "matmul_t" and i.args.index(w) == 0 for i in instrs if w in i.args)
        }
        for a in _ordered(a for i in instrs for a in i.args):
            if saved_src is not None and a in self.saved:
                self.load(out, a, saved_src.format(a=a, i=self.saved.index(a)))
            elif a in self.time_names:
                self.load(out, a, time_src.format(a=a))
            elif a in self.k_names and a not in only_t:
                col = "[:, None]" if a in self.columns else ""
                self.load(out, a, f'k["{a}"]{col}')
            if a in self.tname and any(i.op == "matmul_t" and i.args[0] == a for i in instrs):
                out += with_comment(f'{self.tname[a]} = k["{a}.T"]', "made once, outside the loop",
                                    I1)

    def entry(self) -> dict[str, object]:
        return {
            "step": self.fns["step"],
            "backward_step": self.fns["backward_step"],
            "transposed": tuple(self.transposed),
        }

    def source(self) -> list[str]:
        return ["", ""] + self.step() + ["", ""] + self.backward_step()


def _return(items: Sequence[object]) -> list[str]:
    """``return a, b, c`` on one line, or split the way ruff splits it."""
    one = f"{I1}return " + ", ".join(str(i) for i in items)
    return [one] if len(one) <= WIDTH else call("return ", items, I1)
