"""Importing generated modules in tests: each under a fresh name from a file in tmp_dir."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType


_COUNTER = itertools.count()


def import_source(source: str, tmp_dir: Path, prefix: str) -> ModuleType:
    """Write a generated module's source to tmp_dir and import it under a fresh name."""
    name = f"{prefix}_{next(_COUNTER)}"
    path = Path(tmp_dir) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
