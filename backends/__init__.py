"""Backends: emitters from the IR to a standalone Python module.

A backend is any object with a ``name`` and ``emit(program) -> str``. The
built-ins are ``numpy`` (reference, generated BPTT) and ``jax`` (jitted,
``lax.scan``); others plug in through the ``rnnc.backends`` entry-point group::

    [project.entry-points."rnnc.backends"]
    mybackend = "my_package.backend:MyBackend"
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Protocol

from rnnc.errors import BackendError, did_you_mean
from rnnc.ir.nodes import Program


class Backend(Protocol):
    name: str

    def emit(self, program: Program) -> str: ...


BUILTIN = {
    "numpy": "rnnc.backends.numpy:NumpyBackend",
    "jax": "rnnc.backends.jax:JaxBackend",
}


def _load(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def backend_names() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group="rnnc.backends"))
    return sorted(names)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (built-in first, then entry points)."""
    if name in BUILTIN:
        return _load(BUILTIN[name])()
    for ep in entry_points(group="rnnc.backends"):
        if ep.name == name:
            return ep.load()()
    raise BackendError(f"unknown backend '{name}'", None, did_you_mean(name, backend_names()))
