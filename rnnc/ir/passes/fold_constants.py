"""Constant folding and algebraic identities on the IR."""

from __future__ import annotations

from rnnc.ir.nodes import Cell, Instr


def fold_constants(cell: Cell) -> Cell:
    """Fold ``const op const``, remove ``x * 1``, ``x + 0``, ``x - 0``, ``x / 1``, ``--x``.

    The front end already folds constants while it elaborates options; this
    pass cleans up what other passes leave behind. Values that are a state's
    next value or the output are never removed.

    >>> from rnnc.ir.nodes import Cell, Instr, Var
    >>> one = Instr("one", "const", (), (), False, (("value", 1.0),))
    >>> m = Instr("m", "mul", ("h", "one"), (2,), True)
    >>> t = Instr("t", "act", ("m",), (2,), True, (("fn", "tanh"),))
    >>> c = Cell("c", (Var("x", 2),), (Var("h", 2),), (), (), (), (one, m, t), (("h", "t"),), "t")
    >>> [f"{i.name}={i.op}{i.args}" for i in fold_constants(c).body]
    ['one=const()', "t=act('h',)"]
    """
    consts: dict[str, float] = {}
    alias: dict[str, str] = {}
    protected = {v for _, v in cell.next_state} | {cell.output}
    shapes = {v.name: (v.size,) for v in cell.inputs + cell.states}
    shapes.update({p.name: p.shape for p in cell.params})

    def run(section: tuple[Instr, ...]) -> list[Instr]:
        out: list[Instr] = []
        for ins in section:
            args = tuple(alias.get(a, a) for a in ins.args)
            ins = Instr(ins.name, ins.op, args, ins.shape, ins.batched, ins.attrs, ins.span,
                        ins.comment)
            shapes[ins.name] = ins.shape
            if ins.op == "const":
                consts[ins.name] = ins.attr("value")
                out.append(ins)
                continue
            c = [consts.get(a) for a in args]
            if ins.op in ("add", "sub", "mul", "div") and None not in c:
                value = {"add": c[0] + c[1], "sub": c[0] - c[1], "mul": c[0] * c[1],
                         "div": c[0] / c[1] if c[1] else None}[ins.op]
                if value is not None:
                    consts[ins.name] = value
                    out.append(Instr(ins.name, "const", (), (), False, (("value", value),),
                                     ins.span, ins.comment))
                    continue
            keep = _identity(ins, c, shapes)
            if keep is not None and ins.name not in protected:
                alias[ins.name] = keep
                continue
            out.append(ins)
        return out

    inv, hoisted, body = run(cell.invariant), run(cell.hoisted), run(cell.body)
    next_state = tuple((s, alias.get(v, v)) for s, v in cell.next_state)
    return cell.with_sections(inv, hoisted, body, next_state=next_state,
                              output=alias.get(cell.output, cell.output))


def _identity(ins: Instr, c: list, shapes: dict) -> str | None:
    """The operand ``ins`` equals, when it is an identity operation with the same shape."""
    a = ins.args
    same = lambda i: shapes.get(a[i]) == ins.shape  # noqa: E731  (no broadcasting lost)
    if ins.op == "mul":
        if c[1] == 1.0 and same(0):
            return a[0]
        if c[0] == 1.0 and same(1):
            return a[1]
    if ins.op == "add":
        if c[1] == 0.0 and same(0):
            return a[0]
        if c[0] == 0.0 and same(1):
            return a[1]
    if ins.op in ("sub",) and c[1] == 0.0 and same(0):
        return a[0]
    if ins.op == "div" and c[1] == 1.0 and same(0):
        return a[0]
    if ins.op == "act" and ins.attr("fn") == "identity":
        return a[0]
    return None
