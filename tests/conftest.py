"""Set before any test module starts JAX: fast-compiling XLA flags (tests/xla_flags.py)."""

import xla_flags


xla_flags.set_default()
