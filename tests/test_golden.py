"""Golden generated modules: tests/golden/<spec>/numpy.py, compiled from spec.rnn beside it.

Any change to the generated code fails here until it is explained: rerun with
``RNNC_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and review the
diff of the golden files with the change that caused it (a refactor of the
emitter or the passes should produce none). The golden modules also have to
import and run, and compiling twice must give identical bytes.
"""

import difflib
import os
from pathlib import Path

import numpy as np
import pytest

from rnnc.compiler import compile_spec
from rnnc.gradcheck import load_module
from rnnc.spec import parse_spec


ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SPECS = sorted(p.parent.name for p in GOLDEN.glob("*/spec.rnn"))
UPDATE = os.environ.get("RNNC_UPDATE_GOLDEN") == "1"


def compile_golden(name: str) -> str:
    path = GOLDEN / name / "spec.rnn"
    rel = path.relative_to(ROOT).as_posix()  # the header names the spec as the repo sees it
    return compile_spec(parse_spec(path.read_text(encoding="utf-8"), rel), "numpy")


def test_there_are_golden_specs():
    assert len(SPECS) >= 3


@pytest.mark.parametrize("name", SPECS)
def test_generated_module_matches_golden(name):
    source = compile_golden(name)
    golden = GOLDEN / name / "numpy.py"
    if UPDATE or not golden.exists():
        golden.write_text(source, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"wrote the missing golden file {golden}; review and commit it")
    want = golden.read_text(encoding="utf-8")
    if source != want:
        diff = "".join(difflib.unified_diff(
            want.splitlines(keepends=True), source.splitlines(keepends=True),
            f"golden/{name}/numpy.py", "generated", n=2))
        pytest.fail(f"generated code for {name} changed; if intended, rerun with "
                    f"RNNC_UPDATE_GOLDEN=1 and review the diff:\n{diff[:6000]}")


@pytest.mark.parametrize("name", SPECS)
def test_compiling_twice_is_byte_identical(name):
    assert compile_golden(name).encode() == compile_golden(name).encode()


@pytest.mark.parametrize("name", SPECS)
def test_golden_module_runs(name):
    m = load_module((GOLDEN / name / "numpy.py").read_text(encoding="utf-8"), "golden_" + name)
    params = m.init_params(0)
    rng = np.random.default_rng(0)
    inp, head = m.MODEL["input"], m.MODEL["head"]
    B, T = 2, 6
    if inp["kind"] == "dense":
        xs = rng.normal(size=(B, T, inp["size"])).astype(np.float32)
    else:
        xs = rng.integers(0, inp["vocab"], (B, T))
    shape = (B, T) if head["at"] == "per_step" else (B,)
    if head["kind"] == "softmax":
        ys = rng.integers(0, head["output_size"], shape)
    else:
        ys = rng.normal(size=shape + (head["output_size"],)).astype(np.float32)
    params, opt, state, metrics = m.train_step(params, m.init_opt_state(params), xs, ys,
                                               rng=np.random.default_rng(1))
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert all(v.dtype == np.float32 for v in params.values())
    assert set(state) == set(m.STATE_SHAPES)
