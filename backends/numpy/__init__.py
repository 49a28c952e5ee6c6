"""The NumPy backend: a standalone reference module with generated BPTT.

    >>> from rnnc.backends.numpy import NumpyBackend
    >>> NumpyBackend.name
    'numpy'
"""

from __future__ import annotations

from rnnc.ir.nodes import Program


class NumpyBackend:
    """Emits one standalone NumPy module per program (see ``docs/generated-module.md``)."""

    name = "numpy"

    def emit(self, program: Program) -> str:
        from .emitter import emit

        return emit(program)
