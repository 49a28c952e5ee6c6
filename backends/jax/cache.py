"""JAX's persistent compilation cache for rnnc commands.

XLA compiles every jitted entry point of a generated module on its first call
(seconds on CPU for a training step). With the persistent cache on, the
compiled executables are stored on disk and a later process that compiles the
same program (same module, shapes, JAX version and device) loads them instead.

``rnnc`` commands that run JAX modules call :func:`enable_compilation_cache`
before the first computation. The cache lives in ``$XDG_CACHE_HOME/rnnc/jax``
(``~/.cache/rnnc/jax``; ``%LOCALAPPDATA%\\rnnc\\jax`` on Windows,
``~/Library/Caches/rnnc/jax`` on macOS); the environment variable
``RNNC_JAX_CACHE`` moves it, and ``RNNC_JAX_CACHE=off`` turns it off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


ENV = "RNNC_JAX_CACHE"
OFF = {"off", "0", "false", "no", "none", ""}


def default_cache_dir() -> Path:
    """The per-user cache folder for compiled JAX programs."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rnnc" / "jax"


def cache_dir(path: str | os.PathLike | None = None) -> Path | None:
    """Where the cache goes: `path`, else $RNNC_JAX_CACHE, else the default; None if off."""
    if path is None:
        env = os.environ.get(ENV)
        if env is not None:
            if env.strip().lower() in OFF:
                return None
            path = env
    return Path(path).expanduser() if path is not None else default_cache_dir()


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache; returns its folder (None when off).

    Every program is cached, however small or quick to compile (JAX's defaults skip
    programs that compile in under a second, which is most RNN steps on a GPU). Call it
    before the first computation; calling it again just moves the cache.
    """
    where = cache_dir(path)
    if where is None:
        return None
    problem = _unusable(where)
    if problem is not None:
        if path is None and os.environ.get(ENV) is None:
            return None  # the default place cannot hold a cache: compile without one
        from rnnc.errors import BackendError

        given = f"{ENV}={os.environ[ENV]}" if path is None else f"'{where}'"
        raise BackendError(f"the JAX compilation cache folder ({given}) cannot be used: "
                           f"{problem}", hint=f"point {ENV} at a folder you can write to, or "
                                              f"set {ENV}=off to compile without a cache")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # -1: no minimum size, and no filesystem-specific override of it
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return where


def _unusable(where: Path) -> str | None:
    """Why ``where`` cannot hold the cache (created if need be), or None."""
    for p in (where, *where.parents):
        if p.exists():
            if not p.is_dir():
                return f"'{p}' is a file, not a folder"
            break
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return err.strerror or str(err)
    if not os.access(where, os.W_OK | os.X_OK):
        return "the folder is not writable"
    return None
