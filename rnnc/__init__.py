"""rnnc: a compiler for recurrent neural networks.

Specs (YAML or the rnnc text language) -> AST -> typed IR -> passes ->
standalone NumPy or JAX modules. See README.md and docs/.
"""

from __future__ import annotations


__version__ = "0.1.0"
