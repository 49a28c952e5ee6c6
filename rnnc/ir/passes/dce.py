"""Dead-code elimination: drop instructions nothing depends on, and unused parameters."""

from __future__ import annotations

from dataclasses import replace

from rnnc.ir.nodes import Cell


def dce(cell: Cell) -> Cell:
    """Remove every instruction whose value reaches neither the next state nor the output.

    Parameters that no remaining instruction reads are dropped too.

    >>> from rnnc.ir.nodes import Cell, Instr, Var
    >>> c = Cell("c", (Var("x", 2),), (Var("h", 2),), (), (), (),
    ...          (Instr("dead", "neg", ("x",), (2,), True), Instr("h2", "neg", ("h",), (2,), True)),
    ...          (("h", "h2"),), "h2")
    >>> [i.name for i in dce(c).body]
    ['h2']
    """
    live = {v for _, v in cell.next_state} | {cell.output}
    for ins in reversed(cell.instrs):
        if ins.name in live:
            live.update(ins.args)
    keep = lambda section: tuple(i for i in section if i.name in live)  # noqa: E731
    params = tuple(p for p in cell.params if p.name in live)
    return replace(cell, invariant=keep(cell.invariant), hoisted=keep(cell.hoisted),
                   body=keep(cell.body), params=params)
