"""Read the IR's text form (``rnnc ir``) back into a :class:`~rnnc.ir.nodes.Cell`.

The inverse of :func:`rnnc.ir.printer.cell_str`, so pass fixtures can be
written as *input IR -> expected IR* text pairs::

    >>> from rnnc.ir.printer import cell_str
    >>> text = '''cell c(%x: [B, 2])
    ...   state %h: [B, 2]
    ...   param %W: [2, 2] init xavier_uniform
    ...   body:
    ...     %a: [B, 2] = matmul(%W, %x)
    ...     %h2: [B, 2] = act(%a) {fn='tanh'}
    ...   next %h' = %h2
    ...   output %h2'''
    >>> cell_str(parse_cell(text)) == text
    True
"""

from __future__ import annotations

import ast
import re

from rnnc.ir.nodes import Cell, Instr, Param, Var


_HEAD = re.compile(r"^cell (\w+)\((.*)\)$")
_VAR = re.compile(r"%(\w+): \[B, (\d+)\]")
_PARAM = re.compile(r"^param %(\w+): \[([\d, ]*)\] init (\w+)(?:\((.*)\))?$")
_INSTR = re.compile(r"^%(\w+): \[(B(?:, )?)?([\d, ]*)\] = (\w+)\((.*?)\)(?: \{(.*)\})?$")
_NEXT = re.compile(r"%(\w+)' = %(\w+)")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.replace(" ", "").split(",") if t)


def _attrs(text: str | None) -> tuple:
    if not text:
        return ()
    out = []
    for part in re.split(r", (?=\w+=)", text):
        key, _, value = part.partition("=")
        out.append((key, ast.literal_eval(value)))
    return tuple(sorted(out))


def parse_cell(text: str) -> Cell:
    """Parse one cell printed by :func:`rnnc.ir.printer.cell_str`."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    m = _HEAD.match(lines[0])
    if not m:
        raise ValueError(f"not a cell header: {lines[0]!r}")
    name = m.group(1)
    inputs = tuple(Var(n, int(s)) for n, s in _VAR.findall(m.group(2)))
    states: tuple[Var, ...] = ()
    params: list[Param] = []
    sections: dict[str, list[Instr]] = {"invariant": [], "hoisted": [], "body": []}
    current = "body"
    next_state: tuple[tuple[str, str], ...] = ()
    output = ""
    for ln in lines[1:]:
        if ln.startswith("state "):
            states = tuple(Var(n, int(s)) for n, s in _VAR.findall(ln))
        elif ln.startswith("param "):
            pm = _PARAM.match(ln)
            if not pm:
                raise ValueError(f"bad param line: {ln!r}")
            args = ast.literal_eval(f"({pm.group(4)},)") if pm.group(4) else ()
            shape = _ints(pm.group(2))
            fan = (shape[1], shape[0]) if len(shape) == 2 else None
            params.append(Param(pm.group(1), shape, (pm.group(3), tuple(args)), fan))
        elif ln.rstrip(":") in sections:
            current = ln.rstrip(":")
        elif ln.startswith("next "):
            next_state = tuple(_NEXT.findall(ln))
        elif ln.startswith("output "):
            output = ln.split("%", 1)[1]
        else:
            im = _INSTR.match(ln)
            if not im:
                raise ValueError(f"bad instruction line: {ln!r}")
            args = tuple(a.strip().lstrip("%") for a in im.group(5).split(",") if a.strip())
            sections[current].append(Instr(im.group(1), im.group(4), args, _ints(im.group(3)),
                                           im.group(2) is not None, _attrs(im.group(6))))
    return Cell(name, inputs, states, tuple(params), tuple(sections["invariant"]),
                tuple(sections["hoisted"]), tuple(sections["body"]), next_state, output)
