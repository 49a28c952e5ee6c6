"""Reassociate sums so that the parts that do not depend on the state are added first.

``W @ x + U @ h + b`` parses as ``(W @ x + U @ h) + b``: the bias add reads the
state-dependent sum, so it stays in the time loop. Regrouped as
``(W @ x + b) + U @ h``, the bias add reads only the input and a parameter, and
:func:`~rnnc.ir.passes.hoist_inputs.hoist_inputs` moves it out of the loop
with the input projection. Floating-point addition is not associative, so the
result can differ in the last bits from the source order; both backends read
the same IR, so they still agree exactly.
"""

from __future__ import annotations

from collections import Counter

from rnnc.ir.nodes import Cell, Instr


def _levels(cell: Cell) -> dict[str, int]:
    """0: parameters only; 1: inputs (and parameters); 2: reads the state."""
    level = {p.name: 0 for p in cell.params}
    level.update({v.name: 1 for v in cell.inputs})
    level.update({v.name: 2 for v in cell.states})
    for ins in cell.instrs:
        level[ins.name] = max((level[a] for a in ins.args), default=0)
    return level


def reassociate(cell: Cell) -> Cell:
    """Regroup chains of ``add`` so the terms that do not read the state are summed first.

    Only chains whose inner sums have a single use are regrouped, and the
    chain's root keeps its name.

    >>> from rnnc.ir.nodes import Cell, Instr, Param, Var
    >>> P = Param("W", (2, 2), ("zeros", ())), Param("b", (2,), ("zeros", ()))
    >>> wx = Instr("wx", "matmul", ("W", "x"), (2,), True)
    >>> s = Instr("s", "add", ("wx", "h"), (2,), True)
    >>> t = Instr("t", "add", ("s", "b"), (2,), True)
    >>> c = Cell("c", (Var("x", 2),), (Var("h", 2),), P, (), (), (wx, s, t), (("h", "t"),), "t")
    >>> [f"{i.name}={i.op}{i.args}" for i in reassociate(c).body]
    ["wx=matmul('W', 'x')", "s=add('wx', 'b')", "t=add('s', 'h')"]
    """
    level = _levels(cell)
    uses = Counter(a for ins in cell.instrs for a in ins.args)
    uses.update(v for _, v in cell.next_state)
    uses[cell.output] += 1
    defs = {ins.name: ins for ins in cell.instrs}

    def leaves(name: str, root: bool) -> list[str]:
        ins = defs.get(name)
        if ins is None or ins.op != "add" or (not root and uses[name] != 1) or not ins.batched:
            return [name]
        return leaves(ins.args[0], False) + leaves(ins.args[1], False)

    def rebuild(section: tuple[Instr, ...]) -> list[Instr]:
        out: list[Instr] = []
        absorbed: set[str] = set()
        for ins in section:
            if ins.op != "add" or ins.name in absorbed:
                out.append(ins)
                continue
            terms = leaves(ins.name, True)
            order = sorted(range(len(terms)), key=lambda i: (level[terms[i]] == 2, i))
            if order == list(range(len(terms))) or len(terms) < 3:
                out.append(ins)
                continue
            inner = _inner_sums(ins.name, defs, uses)
            absorbed.update(inner)
            out = [i for i in out if i.name not in inner]
            names = [n for n in inner] + [ins.name]
            acc = terms[order[0]]
            for k, i in enumerate(order[1:]):
                name = names[k]
                out.append(Instr(name, "add", (acc, terms[i]), ins.shape, True, (),
                                 ins.span, ins.comment))
                acc = name
        return out

    return cell.with_sections(cell.invariant, rebuild(cell.hoisted), rebuild(cell.body))


def _inner_sums(root: str, defs: dict[str, Instr], uses: Counter) -> list[str]:
    """The single-use ``add`` instructions folded into ``root``'s chain, in definition order."""
    found: list[str] = []

    def walk(name: str, is_root: bool) -> None:
        ins = defs.get(name)
        if ins is None or ins.op != "add" or (not is_root and uses[name] != 1) or not ins.batched:
            return
        if not is_root:
            found.append(name)
        walk(ins.args[0], False)
        walk(ins.args[1], False)

    walk(root, True)
    order = list(defs)
    return sorted(found, key=order.index)
