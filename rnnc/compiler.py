"""The compiler pipeline as a Python API: spec -> AST -> IR -> passes -> source.

    >>> from rnnc.compiler import compile_file
    >>> source = compile_file("specs/elman.rnn", backend="numpy")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from rnnc.ir.lower import Sizes, lower
from rnnc.ir.nodes import Program
from rnnc.ir.passes import PIPELINE, get_pass
from rnnc.ir.verify import verify_cell
from rnnc.spec import load_spec
from rnnc.spec.ast import Spec


def optimize(program: Program, disable: Iterable[str] = (), until: str | None = None
             ) -> Program:
    """Run the pass pipeline on every layer's cell (verifying the IR after each pass).

    ``disable`` names passes to skip; ``until`` stops after the named pass.
    """
    disable = set(disable)
    for name in list(disable) + ([until] if until is not None else []):
        get_pass(name)  # unknown names fail with a did-you-mean
    layers = []
    for layer in program.model.layers:
        cell = layer.cell
        verify_cell(cell)
        for name in PIPELINE:
            if name not in disable:
                cell = get_pass(name)(cell)
                verify_cell(cell, after=name)
            if name == until:
                break
        layers.append(replace(layer, cell=cell))
    return replace(program, model=replace(program.model, layers=tuple(layers)))


def build(spec: Spec, sizes: Sizes | None = None, disable: Iterable[str] = (),
          base_dir: str | Path = ".") -> Program:
    """Lower and optimise a parsed spec."""
    return optimize(lower(spec, sizes, str(base_dir)), disable)


def compile_spec(spec: Spec, backend: str = "numpy", sizes: Sizes | None = None,
                 disable: Iterable[str] = (), base_dir: str | Path = ".") -> str:
    """The generated module's source for ``spec``."""
    from rnnc.backends import get_backend

    program = build(spec, sizes, disable, base_dir)
    return get_backend(backend).emit(program)


def compile_file(path: str | Path, backend: str = "numpy", sizes: Sizes | None = None,
                 disable: Iterable[str] = ()) -> str:
    spec = load_spec(path)
    return compile_spec(spec, backend, sizes, disable, Path(path).parent)
