"""Gate fusion: matmuls that share their right operand become one matmul and slices."""

from __future__ import annotations

from collections import defaultdict

from rnnc.ir.nodes import Cell, Instr, name_maker


def fuse_gates(cell: Cell) -> Cell:
    """Fuse ``W_1 @ v, W_2 @ v, ...`` into ``concat(W_1, W_2, ...) @ v`` plus slices.

    The weight concatenation (``pconcat``) reads parameters only and goes to
    the invariant section, so it is done once per call; each original value
    keeps its name and becomes a ``slice`` of the fused product. An LSTM's
    eight gate matmuls become two: one over the input, one over the state.

    >>> from rnnc.ir.nodes import Cell, Instr, Param, Var
    >>> P = lambda n: Param(n, (2, 3), ("zeros", ()))
    >>> a = Instr("a", "matmul", ("W_a", "h"), (2,), True)
    >>> b = Instr("b", "matmul", ("W_b", "h"), (2,), True)
    >>> s = Instr("s", "add", ("a", "b"), (2,), True)
    >>> c = Cell("c", (Var("x", 3),), (Var("h", 3),), (P("W_a"), P("W_b")), (), (),
    ...          (a, b, s), (("h", "s"),), "s")
    >>> f = fuse_gates(c)
    >>> [f"{i.name}={i.op}{i.args}" for i in f.invariant]
    ["Wcat_h=pconcat('W_a', 'W_b')"]
    >>> [f"{i.name}={i.op}{i.args}" for i in f.body]
    ["h_proj=matmul('Wcat_h', 'h')", "a=slice('h_proj',)", "b=slice('h_proj',)", "s=add('a', 'b')"]
    """
    params = {p.name: p for p in cell.params}
    new_invariant = list(cell.invariant)
    fresh = name_maker(cell)

    def run(section: tuple[Instr, ...]) -> list[Instr]:
        groups: dict[str, list[Instr]] = defaultdict(list)
        for ins in section:
            if ins.op == "matmul" and ins.args[0] in params:
                groups[ins.args[1]].append(ins)
        fused: dict[str, tuple[Instr, dict[str, Instr]]] = {}
        for right, members in groups.items():
            if len(members) < 2:
                continue
            rows = sum(m.shape[0] for m in members)
            n = params[members[0].args[0]].shape[1]
            wname = fresh(f"Wcat_{right}")
            new_invariant.append(Instr(wname, "pconcat", tuple(m.args[0] for m in members),
                                       (rows, n), False, comment="fused gate weights"))
            proj = Instr(fresh(f"{right}_proj"), "matmul", (wname, right), (rows,),
                         members[0].batched, comment=f"fused gate matmul over {right}")
            slices = {}
            lo = 0
            for m in members:
                hi = lo + m.shape[0]
                slices[m.name] = Instr(m.name, "slice", (proj.name,), m.shape, m.batched,
                                       (("hi", hi), ("lo", lo)), m.span, m.comment)
                lo = hi
            fused[members[0].name] = (proj, slices)
        if not fused:
            return list(section)
        replaced: dict[str, Instr] = {}
        for _proj, slices in fused.values():
            replaced.update(slices)
        out: list[Instr] = []
        for ins in section:
            if ins.name in fused:
                out.append(fused[ins.name][0])
            out.append(replaced.get(ins.name, ins))
        return out

    hoisted = run(cell.hoisted)
    body = run(cell.body)
    return cell.with_sections(new_invariant, hoisted, body)
