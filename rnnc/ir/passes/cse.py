"""Common-subexpression elimination, of a cell (:func:`cse`) and of its backward
(:func:`cse_grad`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from rnnc.ir.nodes import Cell, Instr
from rnnc.ir.passes.autodiff import CellGrad, with_interface


_COMMUTATIVE = {"add", "mul"}


def _run(section: Iterable[Instr], alias: dict[str, str], seen: dict[tuple, str],
         protected: set[str]) -> list[Instr]:
    """``section`` with each instruction equal to an earlier one in ``seen`` dropped (its
    readers read the earlier one: recorded in ``alias``), unless its name is protected."""
    out = []
    for ins in section:
        args = tuple(alias.get(a, a) for a in ins.args)
        key_args = tuple(sorted(args)) if ins.op in _COMMUTATIVE else args
        key = (ins.op, key_args, ins.attrs, ins.shape, ins.batched)
        if key in seen and ins.name not in protected:
            alias[ins.name] = seen[key]
            continue
        seen.setdefault(key, ins.name)
        out.append(Instr(ins.name, ins.op, args, ins.shape, ins.batched, ins.attrs,
                         ins.span, ins.comment))
    return out


def cse(cell: Cell) -> Cell:
    """Compute each distinct ``op(args; attrs)`` once; later copies read the first.

    Commutative ops (add, mul) match with their operands in either order.

    >>> from rnnc.ir.nodes import Cell, Instr, Var
    >>> a = Instr("a", "neg", ("h",), (2,), True)
    >>> b = Instr("b", "neg", ("h",), (2,), True)
    >>> s = Instr("s", "add", ("a", "b"), (2,), True)
    >>> c = Cell("c", (Var("x", 2),), (Var("h", 2),), (), (), (), (a, b, s), (("h", "s"),), "s")
    >>> [f"{i.name}={i.op}{i.args}" for i in cse(c).body]
    ["a=neg('h',)", "s=add('a', 'a')"]
    """
    alias: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    protected = {v for _, v in cell.next_state} | {cell.output}
    inv = _run(cell.invariant, alias, seen, protected)
    hoisted = _run(cell.hoisted, alias, seen, protected)
    body = _run(cell.body, alias, seen, protected)
    return cell.with_sections(inv, hoisted, body)


def cse_grad(grad: CellGrad) -> CellGrad:
    """:func:`cse` of the backward IR: each section's repeated ``op(args; attrs)`` once.

    The gradient rules of ``xc * xc`` give ``d * xc`` once per operand; the second
    copy is dropped and its readers read the first. Instructions match within one
    section only: a body value named in the hoisted section means its stack over the
    steps, and an ``outer`` or ``bsum`` there sums over them, so a hoisted instruction
    is not the same value as its body twin. The adjoints the backward hands on (of the
    states, inputs and parameters, and the partials) keep their instructions.
    """
    alias: dict[str, str] = {}
    protected = {d for pairs in (grad.state_grads, grad.input_grads, grad.partials,
                                 grad.param_grads) for _, d in pairs}
    body = _run(grad.body, alias, {}, protected)
    hoisted = _run(grad.hoisted, alias, {}, protected)
    invariant = _run(grad.invariant, alias, {}, protected)
    return with_interface(replace(grad, body=tuple(body), hoisted=tuple(hoisted),
                                  invariant=tuple(invariant)))
