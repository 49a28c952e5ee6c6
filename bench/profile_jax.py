"""Where a generated JAX module's training step spends its time, per XLA operation.

Runs ``loss_and_grad`` (or ``train_step``) of the char-LM benchmark model under
``jax.profiler.trace`` and sums the trace's events by name: on CPU every XLA thunk
(one fusion, one dot, one while loop) is an event, so the table shows which
operations of the compiled program take the time, and how many times each ran per
call (a count of T = 100 means it runs inside the time loop).

Usage::

    python bench/profile_jax.py                      # lstm512, the custom-VJP module
    python bench/profile_jax.py --model lstm128 --scan   # autodiff through lax.scan
    python bench/profile_jax.py --module path/to/module.py --what train_step
    python bench/profile_jax.py --floor              # XLA's GEMM rates that bound an LSTM step
    python bench/profile_jax.py --layouts            # recurrent products (B, n) vs (n, B)
    python bench/profile_jax.py --layouts --batch 128   # the same at another batch size

Not a test; the operation names are XLA's (``--hlo FILE`` writes the compiled HLO
text, where each name is defined).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_all import V, emit, load  # noqa: E402
from common import random_batch  # noqa: E402


def profile(fn, calls: int) -> list[tuple[str, float, int]]:
    """(event name, ms per call, count per call) of `calls` runs of fn, largest first."""
    import jax

    fn()
    fn()
    with tempfile.TemporaryDirectory(prefix="rnnc-profile-") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                fn()
        (trace,) = Path(tmp).rglob("*.trace.json.gz")
        events = json.load(gzip.open(trace))["traceEvents"]
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith("$"):  # "$": Python frames
            total[e["name"]] += e["dur"]
            count[e["name"]] += 1
    return [(n, total[n] / calls / 1e3, count[n] // calls) for n, _ in total.most_common()]


def gemm_floor(H: int = 512, T: int = 100, B: int = 32, repeat: int = 9) -> None:
    """The GEMMs any XLA-scan LSTM training step needs, timed alone (min of `repeat`).

    Forward and backward each run T products (B, H) x (H, 4H) in a lax.scan; the weight
    gradient is one (T*B, H)^T x (T*B, 4H) product; the elementwise work of a step is
    timed as the same scan with the matmul replaced by a tile of h.
    """
    import time

    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    U = jax.random.normal(key, (H, 4 * H)) * 0.03
    xp = jax.random.normal(key, (T, B, 4 * H))
    h0 = jnp.zeros((B, H))
    hs = jax.random.normal(key, (T * B, H))

    def lstm_scan(matmul):
        def body(carry, x):
            h, c = carry
            f, i, g, o = jnp.split(x + matmul(h), 4, -1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        return jax.jit(lambda xp, h0: jax.lax.scan(body, (h0, h0), xp)[1])

    def gemm_only(xp, h0):
        return jax.lax.scan(lambda h, x: (jnp.tanh((x + h @ U)[:, :H]), None), h0, xp)[0]

    cases = [
        ("scan of T small GEMMs (+ tanh)", jax.jit(gemm_only), (xp, h0), 2 * T * B * H * 4 * H),
        ("one big GEMM (T*B rows)", jax.jit(lambda a: a @ U), (hs,), 2 * T * B * H * 4 * H),
        ("LSTM forward scan", lstm_scan(lambda h: h @ U), (xp, h0), 2 * T * B * H * 4 * H),
        ("LSTM elementwise only", lstm_scan(lambda h: jnp.tile(h, (1, 4))), (xp, h0), 0),
    ]
    print(f"# H={H} T={T} B={B}: XLA CPU, min of {repeat}")
    for name, fn, a, flops in cases:
        jax.block_until_ready(fn(*a))
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            best = min(best, time.perf_counter() - t)
        rate = f"{flops / best / 1e9:6.1f} GFLOP/s" if flops else ""
        print(f"{best * 1e3:8.1f} ms  {rate:>14}  {name}")


def layouts(T: int = 100, B: int = 32, repeat: int = 9) -> None:
    """A lax.scan of T recurrent products per weight shape (outputs x inputs), written
    batch-major (h @ W.T, h: (B, n)) and feature-major (W @ h, h: (n, B)), interleaved,
    min of `repeat`; and the backward's product both ways (g @ W; W.T @ g with W.T made
    outside the loop, and inside it). What the JAX backend's feature-major loops rest on
    (docs/jax.md, fm_max_batch)."""
    import time

    import jax
    import jax.numpy as jnp

    def timed(fns: dict) -> dict:
        for fn, a in fns.values():
            jax.block_until_ready(fn(*a))
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(repeat):
            for name, (fn, a) in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(fn(*a))
                best[name] = min(best[name], time.perf_counter() - t)
        return best

    def scan(step):
        return jax.jit(lambda W, h: jax.lax.scan(lambda h, _: (step(W, h), None), h, None, T)[0])

    print(f"# T={T} B={B}: XLA CPU, min of {repeat}, ms (GFLOP/s)")
    print(f"{'weight':>12}  {'h @ W.T':>15}  {'W @ h':>15}  ratio")
    key = jax.random.PRNGKey(0)
    for m, n in ((512, 512), (1024, 256), (1024, 512), (1536, 512), (2048, 512), (2048, 1024)):
        W = jax.random.normal(key, (m, n)) * 0.02
        fns = {
            "bm": (scan(lambda W, h: jnp.tanh((h @ W.T)[:, : h.shape[1]])), (W, jnp.ones((B, n)))),
            "fm": (scan(lambda W, h: jnp.tanh((W @ h)[: h.shape[0]])), (W, jnp.ones((n, B)))),
        }
        best = timed(fns)
        rate = {k: 2 * T * B * m * n / v / 1e9 for k, v in best.items()}
        cells = [f"{best[k] * 1e3:6.1f} ({rate[k]:4.0f})" for k in ("bm", "fm")]
        print(f"{m:>5} x {n:<5}  {cells[0]:>15}  {cells[1]:>15}  {best['bm'] / best['fm']:.2f}")
    m, n = 2048, 512
    W = jax.random.normal(key, (m, n)) * 0.02
    g_bm, g_fm = jnp.ones((B, m)) * 0.01, jnp.ones((m, B)) * 0.01

    def outside(W, g):  # W.T made once, before the loop
        Wt = W.T
        return jax.lax.scan(
            lambda g, _: (jnp.tile(jnp.tanh(Wt @ g), (m // n, 1)), None), g, None, T)[0]

    fns = {
        "g @ W (batch-major)": (jax.jit(lambda W, g: jax.lax.scan(
            lambda g, _: (jnp.tile(jnp.tanh(g @ W), (1, m // n)), None), g, None, T)[0]),
            (W, g_bm)),
        "W.T @ g, W.T made outside the loop": (jax.jit(outside), (W, g_fm)),
        "W.T @ g, W.T inside the loop": (jax.jit(lambda W, g: jax.lax.scan(
            lambda g, _: (jnp.tile(jnp.tanh(W.T @ g), (m // n, 1)), None), g, None, T)[0]),
            (W, g_fm)),
    }
    print(f"# backward product, weight {m} x {n}")
    for name, v in timed(fns).items():
        print(f"{v * 1e3:8.1f} ms ({2 * T * B * m * n / v / 1e9:4.0f} GFLOP/s)  {name}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lstm512", help="a bench_all model (default lstm512)")
    ap.add_argument("--module", help="a generated JAX module instead of --model")
    ap.add_argument("--scan", action="store_true", help="emit without the custom VJP")
    ap.add_argument("--what", choices=("loss_and_grad", "train_step"), default="loss_and_grad")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--hlo", metavar="FILE", help="write the compiled HLO text here")
    ap.add_argument("--floor", action="store_true", help="time the GEMMs alone, then stop")
    ap.add_argument(
        "--layouts", action="store_true", help="time recurrent products in both layouts, then stop"
    )
    ap.add_argument("--batch", type=int, default=32, help="the batch size of --layouts")
    args = ap.parse_args(argv)
    if args.floor:
        gemm_floor()
        return
    if args.layouts:
        layouts(B=args.batch)
        return

    import jax
    import jax.numpy as jnp

    if args.module:
        path = Path(args.module)
    else:
        path = Path(tempfile.mkdtemp(prefix="rnnc-profile-")) / f"{args.model}.py"
        path.write_text(emit(args.model, "jax-scan" if args.scan else "jax"))
    mod = load(path, "profiled_module")
    xs_np, ys_np = random_batch(V, 100, 32, 0)
    xs, ys = jnp.asarray(xs_np, jnp.int32), jnp.asarray(ys_np, jnp.int32)
    params = mod.init_params(0)
    if args.what == "loss_and_grad":

        def fn():
            jax.block_until_ready(mod.loss_and_grad(params, xs, ys))

        jitted, call_args = mod.loss_and_grad, (params, xs, ys)
    else:
        opt = mod.init_opt_state(params)

        def fn():
            jax.block_until_ready(mod.train_step(params, opt, xs, ys))

        jitted = mod._jitted_train_step(params, None)
        call_args = (params, opt, xs, ys, None, None, None, None, None)
    if args.hlo:
        Path(args.hlo).write_text(jitted.lower(*call_args).compile().as_text())
    rows = profile(fn, args.calls)
    print(f"# {path.name}: {args.what}, {args.calls} profiled calls; ms and count per call")
    print(f"{'ms':>9}  {'count':>5}  event")
    for name, ms, n in rows[: args.top]:
        print(f"{ms:9.2f}  {n:5d}  {name[:90]}")


if __name__ == "__main__":
    main()
