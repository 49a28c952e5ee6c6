"""A reference interpreter for the IR: runs a cell over a sequence with NumPy.

Each instruction is rendered with the shared op table (``rnnc.ir.ops.render``
with ``np``) -- the same text the NumPy backend prints -- and evaluated in
order: the invariant section once, the hoisted section over all steps at once,
the body once per step. It is the independent reference the pass tests use
(every pass must leave these numbers unchanged) and what ``rnnc plot --gates``
runs to record gate activations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rnnc.ir.nodes import Cell, Instr
from rnnc.ir.ops import render


class CompiledCell:
    """A cell's instructions rendered once to Python code objects, run with NumPy.

    ``record`` names values whose every step is kept (``rnnc plot --gates``).
    """

    def __init__(self, cell: Cell, record: Sequence[str] = ()):
        self.cell = cell

        def code(ins: Instr):
            return compile(render(ins, "np"), f"<{cell.name}.{ins.name}>", "eval")

        self.invariant = [(i.name, code(i)) for i in cell.invariant]
        self.hoisted = [(i.name, code(i)) for i in cell.hoisted]
        self.body = [(i.name, code(i)) for i in cell.body]
        self.gates = list(record)

    @staticmethod
    def _run(program, env: dict[str, Any]) -> None:
        for name, code in program:
            env[name] = eval(code, {"np": np}, env)  # noqa: S307 - code rendered from the IR

    def run(self, params: Mapping[str, np.ndarray], xs: np.ndarray, reverse: bool,
            lengths: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Run over ``xs`` ``(B, T, n)``; returns (outputs, gates over time, final state)."""
        cell = self.cell
        batch, steps = xs.shape[:2]
        env: dict[str, Any] = dict(params)
        self._run(self.invariant, env)
        hoisted: dict[str, np.ndarray] = {}
        if self.hoisted:
            henv = dict(env)
            henv[cell.inputs[0].name] = xs
            self._run(self.hoisted, henv)
            hoisted = {name: henv[name] for name, _ in self.hoisted}
        state = {s.name: np.zeros((batch, s.size), dtype=xs.dtype) for s in cell.states}
        outputs: list[np.ndarray | None] = [None] * steps
        gates: dict[str, list[np.ndarray | None]] = {g: [None] * steps for g in self.gates}
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        for t in order:
            step_env = dict(env)
            step_env.update(state)
            step_env[cell.inputs[0].name] = xs[:, t]
            for name, value in hoisted.items():
                step_env[name] = value[:, t]
            self._run(self.body, step_env)
            valid = (t < lengths)[:, None]
            state = {s: np.where(valid, step_env[v], state[s]) for s, v in cell.next_state}
            outputs[t] = step_env[cell.output]
            for g in self.gates:
                gates[g][t] = step_env[g]
        return (np.stack(outputs, axis=1),
                {g: np.stack(v, axis=1) for g, v in gates.items()}, state)
