"""A small IR interpreter: run a lowered model with NumPy and record every value.

Used by ``rnnc plot RUN_DIR --gates INPUT``: it evaluates each layer's
:class:`~rnnc.ir.nodes.Cell` instruction by instruction (``rnnc.ir.ops.render``
gives the array code of each op, the same text the backends print), with the
parameters of a checkpoint, and keeps the value of every *gate* -- an
equation of the cell whose value is a sigmoid-type activation (``i``, ``f``,
``o`` of an LSTM, ``z``, ``r`` of a GRU) -- at every time step.

Because it runs the whole model (input encoding, layers in both directions,
residual connections, head), it doubles as an independent reference for the
generated modules' ``forward``: the tests compare the two.

    >>> out = interpret(program, params, xs)        # doctest: +SKIP
    >>> out.outputs.shape, sorted(out.gates)         # doctest: +SKIP
    ((1, 12, 7), ['layer1.f', 'layer1.i', 'layer1.o'])
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnc.errors import TrainError
from rnnc.ir.interp import CompiledCell
from rnnc.ir.nodes import Cell, Layer, Program


GATE_ACTIVATIONS = ("sigmoid", "hard_sigmoid")
"""Activations whose outputs lie in [0, 1] and act as gates."""

_TEMP = re.compile(r"^t\d+$")


def gate_names(cell: Cell) -> list[str]:
    """The cell's gates: equations (not temporaries) computed by a sigmoid-type activation."""
    return [ins.name for ins in cell.instrs
            if ins.op == "act" and ins.attr("fn") in GATE_ACTIVATIONS and not _TEMP.match(ins.name)]


@dataclass
class Interpretation:
    """What :func:`interpret` returns.

    Attributes:
        outputs: the head's outputs, as ``forward`` gives them (probabilities for
            softmax heads): ``(B, T, out)`` per step, ``(B, out)`` for ``last`` heads.
        gates: ``{"<layer>[.<dir>].<gate>": (B, T, size)}`` for every gate of every layer.
        states: the final state, ``{"<layer>[.<dir>].<state>": (B, size)}``.
    """

    outputs: np.ndarray
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    states: dict[str, np.ndarray] = field(default_factory=dict)


def _encode(program: Program, params: Mapping[str, np.ndarray], xs: np.ndarray,
            dtype: np.dtype) -> np.ndarray:
    enc = program.model.input
    if enc.kind == "onehot":
        ids = np.asarray(xs, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= enc.vocab):
            raise TrainError(f"token ids must lie in 0..{enc.vocab - 1}")
        x = np.zeros(ids.shape + (enc.vocab,), dtype=dtype)
        np.put_along_axis(x, ids[..., None], 1, axis=-1)
        return x
    if enc.kind == "embedding":
        return np.asarray(params["input.E"], dtype=dtype)[np.asarray(xs, dtype=np.int64)]
    return np.asarray(xs, dtype=dtype)


def _layer_params(layer: Layer, direction: str, params: Mapping[str, np.ndarray],
                  dtype: np.dtype) -> dict[str, np.ndarray]:
    prefix = layer.prefix(direction)
    try:
        return {p.name: np.asarray(params[prefix + p.name], dtype=dtype) for p in layer.cell.params}
    except KeyError as err:
        raise TrainError(f"the checkpoint has no parameter {err.args[0]!r}",
                         hint="it was written for a different model") from None


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def interpret(program: Program, params: Mapping[str, Any], xs: Any,
              lengths: Any = None) -> Interpretation:
    """Run ``program``'s model on ``xs`` (``(B, T)`` ids or ``(B, T, F)`` features)."""
    params = {k: np.asarray(v) for k, v in params.items()}
    dtype = np.asarray(params["head.W"]).dtype
    h = _encode(program, params, xs, dtype)
    batch, steps = h.shape[:2]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    result = Interpretation(outputs=np.empty(0))
    for layer in program.model.layers:
        compiled = CompiledCell(layer.cell, gate_names(layer.cell))
        outs = []
        for d in layer.directions:
            p = _layer_params(layer, d, params, dtype)
            # a bwd direction runs t = T-1 .. 0; masking keeps its state at zero until
            # each row's last valid step
            out, gates, state = compiled.run(p, h, d == "bwd", lengths)
            outs.append(out)
            prefix = layer.prefix(d)
            result.gates.update({prefix + g: v for g, v in gates.items()})
            result.states.update({prefix + s: v for s, v in state.items()})
        if len(outs) == 2:
            out = np.concatenate(outs, -1) if layer.merge == "concat" else outs[0] + outs[1]
        else:
            out = outs[0]
        h = out + h if layer.residual else out
    head = program.model.head
    if head.at == "last":
        h = h[np.arange(batch), lengths - 1]
    logits = h @ params["head.W"].T + params["head.b"]
    result.outputs = _softmax(logits) if head.kind == "softmax" else logits
    return result

