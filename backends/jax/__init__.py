"""The JAX backend: jitted modules over ``jax.lax.scan`` with ``jax.value_and_grad``.

``rnnc compile SPEC --backend jax`` writes one standalone module (it imports jax,
jax.numpy and numpy, never rnnc) implementing ``docs/generated-module.md``;
``docs/jax.md`` describes what is specific to this backend (jit, sharding over
devices, the compilation cache).
"""

from __future__ import annotations

from rnnc.ir.nodes import Program


class JaxBackend:
    """Emits a JAX module from a program."""

    name = "jax"
    file_suffix = ".py"

    def emit(self, program: Program) -> str:
        from .emitter import emit

        return emit(program)
