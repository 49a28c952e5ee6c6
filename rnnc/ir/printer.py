"""The stable text form of the IR (``rnnc ir``), also used by pass fixtures."""

from __future__ import annotations

from rnnc.ir.nodes import Cell, Instr, Model, Program


def _shape(s: tuple[int, ...], batched: bool) -> str:
    dims = ", ".join(str(d) for d in s)
    if batched:
        return f"[B, {dims}]" if dims else "[B]"
    return f"[{dims}]"


def instr_str(ins: Instr) -> str:
    at = ""
    if ins.attrs:
        at = " {" + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                              for k, v in ins.attrs) + "}"
    args = ", ".join(f"%{a}" for a in ins.args)
    return f"%{ins.name}: {_shape(ins.shape, ins.batched)} = {ins.op}({args}){at}"


def cell_str(cell: Cell, indent: str = "") -> str:
    lines = [f"{indent}cell {cell.name}("
             + ", ".join(f"%{v.name}: [B, {v.size}]" for v in cell.inputs) + ")"]
    lines.append(indent + "  state " + ", ".join(f"%{v.name}: [B, {v.size}]"
                                                 for v in cell.states))
    for p in cell.params:
        init = p.init[0] + (f"({', '.join(repr(a) for a in p.init[1])})" if p.init[1] else "")
        lines.append(f"{indent}  param %{p.name}: {_shape(p.shape, False)} init {init}")
    for title, section in (("invariant", cell.invariant), ("hoisted", cell.hoisted),
                           ("body", cell.body)):
        if section:
            lines.append(f"{indent}  {title}:")
            lines.extend(f"{indent}    {instr_str(i)}" for i in section)
    lines.append(f"{indent}  next " + ", ".join(f"%{s}' = %{v}" for s, v in cell.next_state))
    lines.append(f"{indent}  output %{cell.output}")
    return "\n".join(lines)


def model_str(model: Model) -> str:
    enc = model.input
    lines = [f"model {model.name}"]
    if enc.kind == "dense":
        lines.append(f"  input dense features={enc.size} normalize={enc.normalize}")
    else:
        lines.append(f"  input {enc.kind} vocab={enc.vocab} size={enc.size}")
    for layer in model.layers:
        extra = []
        if layer.directions != ("fwd",):
            extra.append("directions=" + "+".join(layer.directions))
        if layer.bidirectional:
            extra.append(f"merge={layer.merge}")
        if layer.residual:
            extra.append("residual")
        if layer.dropout:
            extra.append(f"dropout={layer.dropout}")
        lines.append(f"  layer {layer.name}: in={layer.input_size} "
                     f"out={layer.output_size}" + "".join(" " + e for e in extra))
        lines.append(cell_str(layer.cell, "    "))
    h = model.head
    lines.append(f"  head {h.kind} at={h.at} in={h.input_size} out={h.output_size}")
    lines.append(f"  params {model.param_count}")
    return "\n".join(lines)


def program_str(program: Program) -> str:
    out = [model_str(program.model)]
    t = program.train
    if t is not None:
        out.append("train")
        out.append(f"  data {t.data[0]} " + " ".join(f"{k}={v!r}" for k, v in t.data[1]))
        if t.k1 is not None:
            out.append(f"  bptt k1={t.k1} k2={t.k2}")
        out.append(f"  updater {t.updater[0]} " + " ".join(f"{k}={v!r}" for k, v in t.updater[1]))
        if t.clip_norm is not None or t.clip_value is not None:
            out.append(f"  clip norm={t.clip_norm} value={t.clip_value}")
        out.append(f"  l1={t.l1} l2={t.l2} epochs={t.epochs} batch={t.batch} seed={t.seed} "
                   f"reset={t.reset} dtype={t.dtype}")
    return "\n".join(out) + "\n"
