"""Input hoisting: move work that does not depend on the state out of the time loop."""

from __future__ import annotations

from rnnc.ir.nodes import Cell, Instr


def hoist_inputs(cell: Cell) -> Cell:
    """Split the cell's instructions into the invariant, hoisted and body sections.

    An instruction that reads only parameters (and other invariant values)
    becomes *invariant*: computed once per call. One that reads inputs but no
    state becomes *hoisted*: computed once for every time step at the same
    time, so ``W @ x`` over all steps is one ``(B*T, X) x (X, H)`` matmul
    instead of T small ones. Everything else stays in the body.

    >>> from rnnc.ir.nodes import Cell, Instr, Param, Var
    >>> wx = Instr("wx", "matmul", ("W", "x"), (2,), True)
    >>> hn = Instr("hn", "add", ("wx", "h"), (2,), True)
    >>> c = Cell("c", (Var("x", 3),), (Var("h", 2),), (Param("W", (2, 3), ("zeros", ())),),
    ...          (), (), (wx, hn), (("h", "hn"),), "hn")
    >>> h = hoist_inputs(c)
    >>> [i.name for i in h.hoisted], [i.name for i in h.body]
    (['wx'], ['hn'])
    """
    where: dict[str, str] = {p.name: "invariant" for p in cell.params}
    where.update({v.name: "hoisted" for v in cell.inputs})
    where.update({v.name: "body" for v in cell.states})
    rank = {"invariant": 0, "hoisted": 1, "body": 2}
    sections: dict[str, list[Instr]] = {"invariant": [], "hoisted": [], "body": []}
    protected = {v for _, v in cell.next_state}
    for ins in cell.instrs:
        levels = [rank[where[a]] for a in ins.args] or [0]
        sec = ["invariant", "hoisted", "body"][max(levels)]
        if ins.op == "const":
            sec = "invariant"
        if ins.name in protected or ins.name == cell.output:
            # next states and the output are produced by the step itself
            sec = "body" if sec != "invariant" or ins.batched else sec
        where[ins.name] = sec
        sections[sec].append(ins)
    return cell.with_sections(sections["invariant"], sections["hoisted"], sections["body"])
