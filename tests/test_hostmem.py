"""rnnc's commands keep freed host memory in the process (rnnc/train/hostmem.py)."""

import os
import platform
import subprocess
import sys

import pytest


SCRIPT = """
import ctypes, ctypes.util, sys
from rnnc.train import hostmem
first = hostmem.keep_freed_memory()
again = hostmem.keep_freed_memory()
print(first, again)
"""


def run(env_value):
    env = dict(os.environ)
    env.pop("RNNC_MALLOC", None)
    if env_value is not None:
        env["RNNC_MALLOC"] = env_value
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_thresholds_are_set_once_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert run(None) == ["True", "True"]


def test_env_leaves_the_allocator_alone():
    assert run("default") == ["False", "False"]


FAULTS = """
import resource, sys
from rnnc.train import hostmem
if sys.argv[1] == "keep":
    assert hostmem.keep_freed_memory()
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # a 24-step scan whose stacked output (96 MB) is a temporary of the call
    def body(c, i):
        return c + 1.0, jnp.sin(c * i)
    _, ys = jax.lax.scan(body, x, jnp.arange(24.0))
    return ys.sum()

x = jnp.ones((1024, 1024), jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_large_temporary_is_not_faulted_in_again_on_every_call():
    """XLA's CPU runtime allocates a call's temporaries as one block from its worker
    threads; without the settings glibc maps it afresh on every call (24,000 page faults
    here, one per 4 KiB page, unless the system backs it with huge pages); with them the
    block stays in the process and a call faults almost no page."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    pytest.importorskip("jax")

    def faults(mode):
        env = {k: v for k, v in os.environ.items() if k != "RNNC_MALLOC"}
        r = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    kept = faults("keep")
    assert kept < 500, (kept, faults("default"))
