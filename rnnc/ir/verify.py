"""Invariants of the IR, checked between passes (a failure is a compiler bug)."""

from __future__ import annotations

from rnnc.ir.nodes import Cell
from rnnc.ir.ops import OPS


class IRError(AssertionError):
    """The IR broke an invariant: a bug in rnnc, not in the spec."""


def verify_cell(cell: Cell, after: str | None = None) -> Cell:
    """Check SSA form, section discipline, arities and shapes; return the cell unchanged."""
    where = f" (after pass {after})" if after else ""

    def fail(msg: str) -> IRError:
        return IRError(f"IR of cell '{cell.name}'{where}: {msg}")

    params = {p.name: p for p in cell.params}
    inputs = {v.name: v.size for v in cell.inputs}
    states = {v.name: v.size for v in cell.states}
    # which names each section may read
    defined: dict[str, str] = {n: "param" for n in params}
    defined.update({n: "input" for n in inputs})
    defined.update({n: "state" for n in states})
    if len(defined) != len(params) + len(inputs) + len(states):
        raise fail("a name is both a parameter, an input or a state")
    allowed = {
        "invariant": {"param", "invariant"},
        "hoisted": {"param", "input", "invariant", "hoisted"},
        "body": {"param", "input", "state", "invariant", "hoisted", "body"},
    }
    shapes: dict[str, tuple[int, ...]] = {n: p.shape for n, p in params.items()}
    shapes.update({n: (s,) for n, s in inputs.items()})
    shapes.update({n: (s,) for n, s in states.items()})
    batched = {n: False for n in params} | {n: True for n in inputs} | {n: True for n in states}
    for section, instrs in (("invariant", cell.invariant), ("hoisted", cell.hoisted),
                            ("body", cell.body)):
        for ins in instrs:
            if ins.op not in OPS:
                raise fail(f"unknown op '{ins.op}' in %{ins.name}")
            arity = OPS[ins.op].arity
            if arity is not None and len(ins.args) != arity:
                raise fail(f"%{ins.name} = {ins.op} takes {arity} operands")
            if ins.name in defined:
                raise fail(f"%{ins.name} is defined twice")
            for a in ins.args:
                if a not in defined:
                    raise fail(f"%{ins.name} reads %{a}, which is not defined before it")
                if defined[a] not in allowed[section]:
                    raise fail(f"%{ins.name} in section {section} reads %{a} "
                               f"({defined[a]})")
            want_batched = any(batched[a] for a in ins.args)
            if ins.batched != want_batched:
                raise fail(f"%{ins.name} is marked batched={ins.batched}")
            if ins.op in ("add", "sub", "mul", "div"):
                sa, sb = (shapes[a] for a in ins.args)
                if sa and sb and sa != sb or (sa or sb) != ins.shape:
                    raise fail(f"%{ins.name} = {ins.op} of shapes {sa} and {sb} gives {ins.shape}")
            if ins.op == "matmul":
                w, v = (shapes[a] for a in ins.args)
                if len(w) != 2 or w[1] != v[0] or ins.shape != (w[0],):
                    raise fail(f"%{ins.name} = matmul of {w} and {v} gives {ins.shape}")
            if section == "invariant" and ins.batched:
                raise fail(f"%{ins.name} in the invariant section is batched")
            defined[ins.name] = section
            shapes[ins.name] = ins.shape
            batched[ins.name] = ins.batched
    for s, v in cell.next_state:
        if s not in states:
            raise fail(f"next value given for %{s}, which is not a state")
        if v not in shapes or shapes[v] != (states[s],):
            raise fail(f"next value of %{s} is %{v} with shape {shapes.get(v)}")
    if {s for s, _ in cell.next_state} != set(states):
        raise fail("every state needs exactly one next value")
    if cell.output not in shapes or len(shapes[cell.output]) != 1:
        raise fail(f"output %{cell.output} is not a vector")
    return cell
