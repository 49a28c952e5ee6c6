"""Every spec in specs/: the NumPy module compiles, imports where rnnc cannot, passes gradcheck."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnc.backends import get_backend
from rnnc.compiler import build
from rnnc.gradcheck import gradcheck_spec
from rnnc.spec import load_spec


ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p for p in (ROOT / "specs").rglob("*") if p.suffix in (".rnn", ".yaml")
               and "lib" not in p.relative_to(ROOT / "specs").parts)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "specs")))
def test_spec_passes_gradcheck(path):
    report = gradcheck_spec(path, T=4, B=2, max_entries=3)
    assert report.ok, report.render()


def test_every_spec_module_imports_without_rnnc(tmp_path):
    names = []
    for i, path in enumerate(SPECS):
        program = build(load_spec(path), base_dir=path.parent)
        (tmp_path / f"m{i}.py").write_text(get_backend("numpy").emit(program), encoding="utf-8")
        names.append(f"m{i}")
    (tmp_path / "rnnc").mkdir()  # a decoy that fails if anything imports rnnc
    (tmp_path / "rnnc" / "__init__.py").write_text("raise ImportError('rnnc was imported')\n")
    numpy_site = str(Path(np.__file__).resolve().parents[1])
    code = ("import importlib, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            f"for n in {names!r}:\n"
            "    m = importlib.import_module(n); m.init_params(0); m.initial_state(2)\n"
            "assert 'rnnc' not in sys.modules\n"
            "print('imported', len(sys.argv))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path), numpy_site],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported")
