"""rnnc's commands keep freed host memory in the process (rnnc/train/hostmem.py)."""

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
    import os

    env = dict(os.environ)
    env.pop("RNNC_MALLOC", None)
    if env_value is not None:
        env["RNNC_MALLOC"] = env_value
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_thresholds_are_set_once_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert run(None) == ["True", "True"]


def test_env_leaves_the_allocator_alone():
    assert run("default") == ["False", "False"]
