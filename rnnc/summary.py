"""What ``rnnc check`` prints: layers, state variables, parameters and their count."""

from __future__ import annotations

import math
from typing import Any

from rnnc.ir.nodes import Program
from rnnc.spec.printer import float_str


def _n(v: float) -> str:
    """A number as a spec writes it (2, 0.005, 1e-8), not as `:g` does (1e-08), and in
    full (`:g` kept six digits)."""
    v = float(v)
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return float_str(v)


def summary(program: Program) -> dict[str, Any]:
    """The summary as plain data (``rnnc check --json``)."""
    m = program.model
    layers = []
    for layer in m.layers:
        layers.append({
            "name": layer.name,
            "cell": layer.cell.name,
            "input": layer.input_size,
            "output": layer.output_size,
            "directions": list(layer.directions),
            "states": {s.name: s.size for s in layer.cell.states},
            "residual": layer.residual,
            "dropout": layer.dropout,
        })
    return {
        "model": m.name,
        "spec_sha256": program.spec_hash,
        "input": {"kind": m.input.kind, "vocab": m.input.vocab, "size": m.input.size,
                  "dropout": m.input_dropout},
        "layers": layers,
        "head": {"kind": m.head.kind, "at": m.head.at, "input": m.head.input_size,
                 "output": m.head.output_size, "dropout": m.output_dropout},
        "state": {v.name: v.size for v in m.state_vars},
        "params": {p.name: list(p.shape) for p in m.params},
        "param_count": m.param_count,
        "train": None if program.train is None else {
            "data": program.train.data[0],
            "updater": program.train.updater[0],
            "bptt": None if program.train.k1 is None else [program.train.k1,
                                                          program.train.k2],
        },
    }


def summary_text(program: Program) -> str:
    m = program.model
    lines = [f"model {m.name}  ({program.source_name or 'spec'} ok)"]
    enc = m.input
    drop = f", dropout {_n(m.input_dropout)}" if m.input_dropout else ""
    if enc.kind == "dense":
        lines.append(f"  input   dense, {enc.size} features{drop}")
    elif enc.kind == "onehot":
        lines.append(f"  input   one-hot, vocabulary {enc.vocab}{drop}")
    else:
        lines.append(f"  input   embedding, vocabulary {enc.vocab} -> {enc.size}{drop}")
    for layer in m.layers:
        dirs = {("fwd",): "", ("bwd",): ", backward",
                ("fwd", "bwd"): f", bidirectional ({layer.merge})"}[layer.directions]
        extra = (", residual" if layer.residual else "") + (
            f", dropout {layer.dropout}" if layer.dropout else "")
        states = ", ".join(f"{s.name}[{s.size}]" for s in layer.cell.states)
        lines.append(f"  {layer.name:<8}{layer.cell.name} {layer.input_size} -> "
                     f"{layer.output_size}{dirs}{extra}; state {states}")
    h = m.head
    where = "every step" if h.at == "per_step" else "the last step"
    loss = "cross-entropy" if h.kind == "softmax" else "mean squared error"
    drop = f", dropout {_n(m.output_dropout)} on its input" if m.output_dropout else ""
    lines.append(f"  head    {h.kind} {h.input_size} -> {h.output_size} at {where} ({loss})"
                 f"{drop}")
    lines.append("  parameters:")
    width = max(len(p.name) for p in m.params)
    for p in m.params:
        shape = "(" + ", ".join(str(d) for d in p.shape) + ("," if len(p.shape) == 1 else "") + ")"
        init = p.init[0] + (f"({', '.join(f'{_n(a)}' for a in p.init[1])})" if p.init[1] else "")
        lines.append(f"    {p.name:<{width}}  {shape:<12} {p.size:>10,}  {init}")
    lines.append(f"  total parameters: {m.param_count:,}")
    t = program.train
    if t is not None:
        bptt = "full BPTT" if t.k1 is None else f"truncated BPTT k1={t.k1} k2={t.k2}"
        lines.append(f"  train   {t.data[0]}, {t.updater[0]}, {bptt}, batch {t.batch}, "
                     f"{t.epochs} epoch{'' if t.epochs == 1 else 's'}")
        lines.append(f"  update  {'; '.join(_update_parts(t))}")
    return "\n".join(lines)


def _call(name: str, args: tuple[tuple[str, Any], ...]) -> str:
    return f"{name}({', '.join(f'{k}: {_n(v)}' for k, v in args)})" if args else name


def _update_parts(t) -> list[str]:
    """How each update is made: the updater with every hyperparameter, the schedule,
    clipping, the penalties, early stopping and state resets."""
    name, args = t.updater
    parts = [_call(name, tuple(sorted(args, key=lambda kv: kv[0] != "lr")))]
    if t.schedule is not None:
        parts.append(f"schedule {_call(*t.schedule)}")
    clip = [f"norm {_n(t.clip_norm)}" if t.clip_norm is not None else "",
            f"value {_n(t.clip_value)}" if t.clip_value is not None else ""]
    parts.append("clip " + " ".join(c for c in clip if c) if any(clip) else "no clipping")
    if t.l1 or t.l2:
        parts.append(", ".join(f"{k} {_n(v)}" for k, v in (("l1", t.l1), ("l2", t.l2)) if v))
    if t.early_stop is not None:
        parts.append(f"early stop on {t.early_stop[0]}, patience {t.early_stop[1]}")
    parts.append(f"state reset per {t.reset}" if t.reset != "never" else "state never reset")
    return parts
