"""XLA flags for the tests' many tiny JAX programs, whose run time is mostly XLA's CPU
compile: LLVM at -O0 without its expensive passes, and XLA's classic kernel emitters
instead of its MLIR fusion emitters (about 0.6x the compile time; they run transcendental
functions several times slower, which is why the generated modules do not use them).
Numerics at the tests' tolerances are the same.

An XLA flag this jaxlib does not know aborts the process that starts XLA, so the emitter
flag is used only after a child process has started XLA with it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys


BASE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
CLASSIC_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


@functools.cache
def fast_compile() -> str:
    """BASE, plus CLASSIC_EMITTERS where this jaxlib accepts it."""
    flags = f"{BASE} {CLASSIC_EMITTERS}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    try:
        r = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError):
        return BASE
    return flags if r.returncode == 0 else BASE


def set_default() -> None:
    """XLA_FLAGS = fast_compile() for this process and its children, unless the caller set
    XLA_FLAGS; takes effect if no XLA backend has started yet."""
    if "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = fast_compile()
