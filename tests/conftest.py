"""Set before any test module starts JAX: fast-compiling XLA flags (tests/xla_flags.py)."""

import xla_flags


xla_flags.set_default()


import gc  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. Every XLA CPU executable keeps
    memory mappings for its code; the suite compiles thousands of programs in one process,
    which reached the kernel's limit of 65,530 mappings per process (vm.max_map_count), and
    XLA then crashed (a segmentation fault) compiling the next one."""
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
        gc.collect()
