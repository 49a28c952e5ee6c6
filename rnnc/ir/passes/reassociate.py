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

import re
from collections import Counter

from rnnc.ir.nodes import Cell, Instr


_TEMP = re.compile(r"^t\d+$")
_PREFIXED_TEMP = re.compile(r"^(\w+_)t\d+$")


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
    chain's root keeps its name. A regrouped partial sum keeps the name of an inner
    sum only if it adds up the same terms; otherwise it is a temporary (``tN``, or
    ``layer1_tN`` for a gated-feedback cell's ``layer1_t4``), so no source name stands
    for a value it is not (``nh = U h + b_h`` is not ``nx + b_h``).

    >>> from rnnc.ir.nodes import Cell, Instr, Param, Var
    >>> P = Param("W", (2, 2), ("zeros", ())), Param("b", (2,), ("zeros", ()))
    >>> wx = Instr("wx", "matmul", ("W", "x"), (2,), True)
    >>> s = Instr("s", "add", ("wx", "h"), (2,), True)
    >>> t = Instr("t", "add", ("s", "b"), (2,), True)
    >>> c = Cell("c", (Var("x", 2),), (Var("h", 2),), P, (), (), (wx, s, t), (("h", "t"),), "t")
    >>> [f"{i.name}={i.op}{i.args}" for i in reassociate(c).body]
    ["wx=matmul('W', 'x')", "t1=add('wx', 'b')", "t=add('t1', 'h')"]
    """
    level = _levels(cell)
    uses = Counter(a for ins in cell.instrs for a in ins.args)
    uses.update(v for _, v in cell.next_state)
    uses[cell.output] += 1
    defs = {ins.name: ins for ins in cell.instrs}
    position = {name: k for k, name in enumerate(defs)}
    # shape and batchedness of every name: a regrouped partial sum can read only parameters
    # and constants (b1 + b2, 0.5 + 0.25), which is neither batched nor of the root's shape
    shape = {p.name: p.shape for p in cell.params}
    shape.update({v.name: (v.size,) for v in (*cell.inputs, *cell.states)})
    shape.update({ins.name: ins.shape for ins in cell.instrs})
    batched = {p.name: False for p in cell.params}
    batched.update({v.name: True for v in (*cell.inputs, *cell.states)})
    batched.update({ins.name: ins.batched for ins in cell.instrs})

    def chain(name: str, root: bool, inner: list[str]) -> list[str]:
        """The terms of the sum rooted at `name`; the single-use sums inside go to `inner`."""
        ins = defs.get(name)
        if ins is None or ins.op != "add" or (not root and uses[name] != 1) or not ins.batched:
            return [name]
        if not root:
            inner.append(name)
        return chain(ins.args[0], False, inner) + chain(ins.args[1], False, inner)

    def temp(root: str) -> str:
        """A temporary's name no value has: ``t<n>``, or ``layer1_t<n>`` for a partial sum
        of ``layer1_t4`` (a temporary of a layer in a gated-feedback cell)."""
        m = _PREFIXED_TEMP.match(root)
        prefix = m.group(1) if m else ""
        n = 1 + max((int(k[len(prefix) + 1:]) for k in shape
                     if k.startswith(prefix) and _TEMP.match(k[len(prefix):])), default=0)
        return f"{prefix}t{n}"

    def leaves(name: str, inner: list[str]) -> Counter[str]:
        """The terms of the inner sum `name` (the chain's inner sums are in `inner`)."""
        out: Counter[str] = Counter()
        for a in defs[name].args:
            out.update(leaves(a, inner) if a in inner else [a])
        return out

    def rebuild(section: tuple[Instr, ...]) -> list[Instr]:
        out: list[Instr] = []
        for ins in section:
            if ins.op != "add":
                out.append(ins)
                continue
            inner: list[str] = []
            terms = chain(ins.name, True, inner)
            order = sorted(range(len(terms)), key=lambda i: (level[terms[i]] == 2, i))
            if order == list(range(len(terms))) or len(terms) < 3:
                out.append(ins)
                continue
            # the inner sums were emitted before the root: drop them, rebuild the chain here
            out = [i for i in out if i.name not in inner]
            # a partial sum keeps the name of an inner sum of the same terms (``nx`` in
            # ``(nx + nh)`` regrouped as ``(nx + b_h) + U h``); otherwise it takes a
            # temporary's name, never that of a named value it is not (``nh``)
            spare = sorted(inner, key=position.__getitem__)
            sums = {n: leaves(n, inner) for n in spare}
            acc = terms[order[0]]
            for k, i in enumerate(order[1:], start=2):
                term = terms[i]
                if k == len(terms):
                    name = ins.name
                else:
                    want = Counter(terms[j] for j in order[:k])
                    same = [n for n in spare if sums[n] == want]
                    name = (same or [n for n in spare if _TEMP.match(n)] or [temp(ins.name)])[0]
                    if name in spare:
                        spare.remove(name)
                shape[name] = shape[acc] or shape[term]
                batched[name] = batched[acc] or batched[term]
                out.append(Instr(name, "add", (acc, term), shape[name], batched[name], (),
                                 ins.span, ins.comment))
                acc = name
        return out

    return cell.with_sections(cell.invariant, rebuild(cell.hoisted), rebuild(cell.body))
