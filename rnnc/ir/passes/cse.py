"""Common-subexpression elimination."""

from __future__ import annotations

from rnnc.ir.nodes import Cell, Instr


_COMMUTATIVE = {"add", "mul"}


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

    def run(section: tuple[Instr, ...]) -> list[Instr]:
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

    inv, hoisted, body = run(cell.invariant), run(cell.hoisted), run(cell.body)
    return cell.with_sections(inv, hoisted, body)
