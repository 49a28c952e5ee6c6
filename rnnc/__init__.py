"""rnnc: a compiler for recurrent neural networks.

Specs (YAML or the rnnc text language) -> AST -> typed IR -> passes ->
standalone NumPy or JAX modules. See README.md and docs/.
"""

from __future__ import annotations

from pathlib import Path as _Path


__version__ = "0.1.0"

# In an installed rnnc, `grammar/`, `backends/` and `specs/` of the checkout are
# installed as the subpackages rnnc.grammar, rnnc.backends and rnnc.specs
# (pyproject's package-dir). Run from a source checkout instead (the checkout on
# sys.path, e.g. `python -c ...` in its root), this package finds them beside it.
_root = _Path(__file__).resolve().parent.parent
if (_root / "grammar" / "rnnc.lark").is_file() and (_root / "pyproject.toml").is_file():
    __path__.append(str(_root))  # noqa: F821 - the package's own __path__
