"""Bias fusion: per-slice bias adds on a fused product become one add and slices."""

from __future__ import annotations

from collections import Counter, defaultdict

from rnnc.ir.nodes import Cell, Instr, name_maker


def fuse_biases(cell: Cell) -> Cell:
    """Turn ``P[lo_k:hi_k] + b_k`` for every slice of ``P`` into ``(P + [b_1; ...])[lo_k:hi_k]``.

    After :func:`~rnnc.ir.passes.fuse_gates.fuse_gates` and
    :func:`~rnnc.ir.passes.reassociate.reassociate`, an LSTM's input projection
    ``x_proj = Wcat_x @ x`` is cut into four slices and each gets its gate's bias.
    When every use of a batched value is such a slice, the slices tile it, and each
    slice's only use adds an unbatched vector of its size (a bias), the biases are
    concatenated once (a ``pconcat`` in the invariant section), added to the whole
    value, and each sum becomes a slice of that: the same additions on the same
    numbers. Its worth is in the backward pass: the biases' gradient is one sum over
    the steps and rows of the fused adjoint (one reduction, then slices of a vector)
    instead of one reduction per gate over a slice of it.

    >>> from rnnc.ir.nodes import Cell, Instr, Param, Var
    >>> W = Param("W", (4, 3), ("zeros", ()))
    >>> b = [Param(n, (2,), ("zeros", ())) for n in ("b_a", "b_b")]
    >>> p = Instr("p", "matmul", ("W", "x"), (4,), True)
    >>> s1 = Instr("s1", "slice", ("p",), (2,), True, (("hi", 2), ("lo", 0)))
    >>> s2 = Instr("s2", "slice", ("p",), (2,), True, (("hi", 4), ("lo", 2)))
    >>> a = Instr("a", "add", ("s1", "b_a"), (2,), True)
    >>> z = Instr("z", "add", ("b_b", "s2"), (2,), True)
    >>> y = Instr("y", "mul", ("a", "z"), (2,), True)
    >>> c = Cell("c", (Var("x", 3),), (Var("h", 2),), (W, *b), (), (),
    ...          (p, s1, s2, a, z, y), (("h", "y"),), "y")
    >>> f = fuse_biases(c)
    >>> [f"{i.name}={i.op}{i.args}" for i in f.invariant]
    ["bcat_p=pconcat('b_a', 'b_b')"]
    >>> [f"{i.name}={i.op}{i.args}" for i in f.body]
    ["p=matmul('W', 'x')", "p_b=add('p', 'bcat_p')", "a=slice('p_b',)", "z=slice('p_b',)", \
"y=mul('a', 'z')"]
    """
    unbatched = {p.name: p.shape for p in cell.params}
    unbatched.update({i.name: i.shape for i in cell.invariant})
    uses = Counter(a for ins in cell.instrs for a in ins.args)
    uses.update(v for _, v in cell.next_state)
    uses[cell.output] += 1
    users: dict[str, list[Instr]] = defaultdict(list)
    for ins in cell.instrs:
        for a in set(ins.args):
            users[a].append(ins)
    fresh = name_maker(cell)

    def bias_of(add: Instr, part: str) -> str | None:
        """The unbatched operand of ``add`` (which reads ``part``) if it is a bias for it."""
        if add.op != "add" or not add.batched or len(add.args) != 2 or add.args[0] == add.args[1]:
            return None
        other = add.args[1] if add.args[0] == part else add.args[0]
        return other if unbatched.get(other) == add.shape else None

    def plan(value: Instr) -> list[tuple[Instr, Instr, str]] | None:
        """(slice, add, bias) for each slice of ``value``, in order, if the pattern holds."""
        if not value.batched or len(value.shape) != 1 or len(users[value.name]) < 2:
            return None
        parts = []
        for s in users[value.name]:
            if s.op != "slice" or s.attr("axis") is not None or uses[s.name] != 1:
                return None
            (add,) = users[s.name] if len(users[s.name]) == 1 else (None,)
            bias = bias_of(add, s.name) if add is not None else None
            if bias is None:
                return None
            parts.append((s, add, bias))
        if uses[value.name] != len(parts):
            return None
        parts.sort(key=lambda t: t[0].attr("lo"))
        at = 0
        for s, _, _ in parts:
            if s.attr("lo") != at:
                return None
            at = s.attr("hi")
        return parts if at == value.shape[0] else None

    new_invariant = list(cell.invariant)
    after: dict[str, Instr] = {}  # value name -> the fused add placed right after it
    dropped: set[str] = set()
    rewrite: dict[str, Instr] = {}
    for value in cell.hoisted + cell.body:
        parts = plan(value)
        if parts is None:
            continue
        n = value.shape[0]
        bcat = Instr(fresh(f"bcat_{value.name}"), "pconcat", tuple(b for _, _, b in parts),
                     (n,), False, comment="fused biases")
        new_invariant.append(bcat)
        fused = Instr(fresh(f"{value.name}_b"), "add", (value.name, bcat.name), value.shape,
                      True, comment=f"{value.name} + the fused biases")
        after[value.name] = fused
        for s, add, _ in parts:
            dropped.add(s.name)
            rewrite[add.name] = Instr(add.name, "slice", (fused.name,), add.shape, True,
                                      s.attrs, add.span, add.comment)
    if not after:
        return cell

    def run(section: tuple[Instr, ...]) -> list[Instr]:
        out: list[Instr] = []
        for ins in section:
            if ins.name in dropped:
                continue
            out.append(rewrite.get(ins.name, ins))
            if ins.name in after:
                out.append(after[ins.name])
        return out

    return cell.with_sections(new_invariant, run(cell.hoisted), run(cell.body))
