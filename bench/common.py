"""Shared utilities for rnnc benchmark scripts.

Import from another script in ``bench/`` with ``from common import ...`` (running
``python bench/<script>.py`` puts ``bench/`` on ``sys.path``), or as ``bench.common``
from the repository root.

Nothing here imports torch or jax at module level: those are imported lazily by the
few helpers that need them, so ``common`` stays cheap for NumPy-only scripts.
"""

import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


__all__ = [
    "GATES",
    "cell_flops",
    "elman_flops",
    "gemm_peak_gflops",
    "gru_flops",
    "lstm_flops",
    "machine_info",
    "mgu_flops",
    "peephole_flops",
    "print_table",
    "random_batch",
    "rnn_flops",
    "time_fn",
    "torch_gemm_peak_gflops",
]


# --------------------------------------------------------------------------- timing


def time_fn(fn: Callable[[], Any], warmup: int = 2, repeat: int = 7) -> dict[str, Any]:
    """Time ``fn()`` and summarise the spread.

    ``fn`` must block until its work is done (for JAX, call ``.block_until_ready()``
    or convert a result to a Python scalar inside ``fn``; torch on CPU is synchronous).
    The first ``warmup`` calls are discarded (JIT compilation, allocator warm-up, lazy
    initialisation), then ``repeat`` calls are timed individually with
    ``time.perf_counter``.

    Returns ``dict(median_s, min_s, max_s, iqr_s, samples)``; ``samples`` is the list of
    per-call seconds in call order. ``iqr_s`` is the 75th minus the 25th percentile
    (linear interpolation; 0.0 for a single sample).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(max(0, warmup)):
        fn()
    samples: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    q25, q75 = np.percentile(samples, [25.0, 75.0])
    return {
        "median_s": float(statistics.median(samples)),
        "min_s": float(min(samples)),
        "max_s": float(max(samples)),
        "iqr_s": float(q75 - q25),
        "samples": samples,
    }


# ----------------------------------------------------------------------- GEMM peak


def gemm_peak_gflops(n: int = 1024, dtype: Any = np.float32, runs: int = 7) -> float:
    """Measured ``n x n @ n x n`` GEMM throughput with NumPy (its BLAS), in GFLOP/s.

    Best of ``runs`` timed calls after one warm-up call; FLOPs counted as ``2 n^3``.
    This is "the achievable peak" the benchmark normalises against, not a datasheet
    number: on a shared, noisy machine the best run is the most stable estimate.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def torch_gemm_peak_gflops(n: int = 1024, dtype: Any = None, runs: int = 7) -> float:
    """Like :func:`gemm_peak_gflops` but with ``torch.mm`` (MKL / oneDNN in CPU wheels).

    ``dtype`` defaults to ``torch.float32``. Uses torch's current thread setting.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    with torch.inference_mode():
        torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


# ----------------------------------------------------------------------- FLOP model

#: Number of H-wide gate blocks computed by matmuls, per cell kind.
GATES: dict[str, int] = {"lstm": 4, "peephole": 4, "gru": 3, "mgu": 2, "rnn": 1}


def cell_flops(
    kind: str,
    V: int,
    H: int,
    T: int,
    B: int,
    layers: int = 1,
    training: bool = True,
) -> int:
    """Matmul FLOPs of one step of the character-LM workload (one batch of B x T tokens).

    The model is ``layers`` stacked recurrent layers of width ``H`` over one-hot inputs of
    width ``V`` (the one-hot input is counted as a dense ``V``-wide input, as frameworks
    that feed ``one_hot(x).float()`` compute it), then a ``Linear(H -> V)`` head applied
    to every step. Only matmuls are counted (1 multiply-add = 2 FLOPs); gate
    nonlinearities, elementwise products, biases, softmax and the optimizer are ignored.

    Forward, per layer ``l`` with input width ``in_l`` (``in_1 = V``, ``in_l = H``
    after) and ``G`` gate blocks::

        layer_l = 2 * B * T * (in_l + H) * G * H
        head    = 2 * B * T * H * V
        forward = sum_l layer_l + head

    ``training=True`` returns ``3 * forward``: the backward pass does two matmuls per
    forward matmul (gradient w.r.t. the input/state and w.r.t. the weight).

    ======== === ========================================================================
    kind      G  cell
    ======== === ========================================================================
    lstm      4  i, f, g, o from one fused ``[x, h] @ W``
    peephole  4  as lstm; the diagonal peepholes ``p * c`` are elementwise (not counted)
    gru       3  r, z, n; ``U_n h`` (or ``U_n (r*h)``) is one of the 3 H-wide blocks
    mgu       2  f, h~; ``U_h (f*h)`` needs f first, so 2 recurrent matmuls per step
    rnn       1  Elman ``tanh(W x + U h + b)``
    ======== === ========================================================================

    Example (V=11, H=8, T=5, B=2, lstm, 1 layer): layer = 2*2*5*(11+8)*32 = 12160,
    head = 2*2*5*8*11 = 1760, forward = 13920, training = 41760.
    """
    try:
        gates = GATES[kind]
    except KeyError:
        raise ValueError(f"unknown cell kind {kind!r}; expected one of {sorted(GATES)}") from None
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    fwd = 0
    in_width = V
    for _ in range(layers):
        fwd += 2 * B * T * (in_width + H) * gates * H
        in_width = H
    fwd += 2 * B * T * H * V
    return 3 * fwd if training else fwd


def lstm_flops(V: int, H: int, T: int, B: int, layers: int = 1, training: bool = True) -> int:
    """:func:`cell_flops` for an LSTM (4 gate blocks)."""
    return cell_flops("lstm", V, H, T, B, layers, training)


def peephole_flops(V: int, H: int, T: int, B: int, layers: int = 1, training: bool = True) -> int:
    """:func:`cell_flops` for a peephole LSTM (same matmuls as an LSTM)."""
    return cell_flops("peephole", V, H, T, B, layers, training)


def gru_flops(V: int, H: int, T: int, B: int, layers: int = 1, training: bool = True) -> int:
    """:func:`cell_flops` for a GRU (3 gate blocks)."""
    return cell_flops("gru", V, H, T, B, layers, training)


def mgu_flops(V: int, H: int, T: int, B: int, layers: int = 1, training: bool = True) -> int:
    """:func:`cell_flops` for a minimal gated unit (2 gate blocks)."""
    return cell_flops("mgu", V, H, T, B, layers, training)


def elman_flops(V: int, H: int, T: int, B: int, layers: int = 1, training: bool = True) -> int:
    """:func:`cell_flops` for a plain (Elman) tanh RNN (1 gate block)."""
    return cell_flops("rnn", V, H, T, B, layers, training)


#: Alias: the "rnn" row of the table in :func:`cell_flops`.
rnn_flops = elman_flops


# ---------------------------------------------------------------------------- data


def random_batch(V: int, T: int, B: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random next-token-prediction batch: ``(tokens_in, targets)``, both ``(B, T)`` int64.

    Drawn as ``B`` sequences of ``T + 1`` tokens uniform in ``[0, V)``; ``targets`` is
    ``tokens_in`` shifted left by one step (``targets[:, t] == seq[:, t + 1]``).
    """
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, V, size=(B, T + 1), dtype=np.int64)
    return np.ascontiguousarray(seq[:, :T]), np.ascontiguousarray(seq[:, 1:])


# ---------------------------------------------------------------------------- table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        mag = abs(value)
        if mag == 0.0:
            return "0"
        if mag >= 1e5:
            return f"{value:,.0f}"
        if mag >= 100:
            return f"{value:.0f}"
        if mag >= 10:
            return f"{value:.1f}"
        if mag >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    file: Any = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Print ``rows`` as a plain-text table with aligned ``columns``; also return the text.

    Missing keys and ``None``/NaN print as ``-``. Numbers are right-aligned (floats get
    a magnitude-dependent number of digits, ints thousands separators), text is
    left-aligned. ``headers`` optionally maps a column key to its printed title.
    """
    headers = headers or {}
    titles = [headers.get(c, c) for c in columns]
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns
    ]
    widths = [
        max([len(t)] + [len(row[i]) for row in cells]) for i, t in enumerate(titles)
    ]

    def line(items: Sequence[str]) -> str:
        parts = [
            s.rjust(w) if num else s.ljust(w)
            for s, w, num in zip(items, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(titles), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    text = "\n".join(out)
    print(text, file=file if file is not None else sys.stdout)
    return text


# -------------------------------------------------------------------- machine info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


_ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "JAX_PLATFORMS",
)


def machine_info() -> dict[str, Any]:
    """Facts that make benchmark numbers comparable: cores, versions, BLAS, env vars.

    Package versions come from installed metadata (nothing heavy is imported). torch
    thread counts are included only if torch is already imported. Environment variables
    from a fixed list (``OPENBLAS_CORETYPE``, ``XLA_FLAGS``, thread counts...) are listed
    only when set.
    """
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    for dist in ("numpy", "torch", "jax", "jaxlib", "flax", "optax"):
        v = _version(dist)
        if v is not None:
            info[dist] = v
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy_blas"] = " ".join(
            str(x) for x in (blas.get("name"), blas.get("version")) if x
        )
        if blas.get("openblas configuration"):
            info["numpy_blas_config"] = blas["openblas configuration"]
    except Exception:  # older numpy without mode="dicts", or unexpected layout
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    env = {k: os.environ[k] for k in _ENV_VARS if k in os.environ}
    if env:
        info["env"] = env
    return info
