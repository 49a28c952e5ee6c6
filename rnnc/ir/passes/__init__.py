"""IR passes: each a pure function ``Cell -> Cell`` with one job, in its own module.

:data:`PIPELINE` is the order :func:`rnnc.compiler.optimize` runs them in;
``rnnc ir SPEC --after PASS`` shows the IR after any of them and
``--disable PASS`` turns one off.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from rnnc.ir.nodes import Cell


PIPELINE: tuple[str, ...] = (
    "fold_constants", "cse", "fuse_gates", "reassociate", "fuse_biases", "hoist_inputs", "dce",
)
"""Pass names in the order they run (each lives in ``rnnc/ir/passes/<name>.py``)."""


def get_pass(name: str) -> Callable[[Cell], Cell]:
    from rnnc.errors import SpecError, did_you_mean

    if name == "autodiff":
        raise SpecError("autodiff is not an optimisation pass that can be turned off or "
                        "stopped after", None, "it builds the backward IR that training runs; "
                        "`rnnc ir SPEC --after autodiff` prints it")
    if name not in PIPELINE:
        raise SpecError(f"unknown pass '{name}'", None, did_you_mean(name, PIPELINE))
    return getattr(import_module(f"rnnc.ir.passes.{name}"), name)
