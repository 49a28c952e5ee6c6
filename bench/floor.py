"""The GEMM floor of an XLA LSTM training step, against PyTorch's whole step, in one run.

Times, interleaved in one process (min / median of every round's calls):

* ``torch``      PyTorch nn.LSTM's whole training step (forward, backward, Adam);
* ``rnnc-jax``   rnnc's generated JAX training step for the same model;
* ``xla-gemms``  a jitted program holding only the matrix products any LSTM training
                 step in XLA must run (the ones rnnc's step runs, in its layouts): the
                 forward loop of T recurrent products ``W_h @ h`` (4H x H by H x B,
                 feature-major, with one ``tanh`` to carry the dependence), the backward
                 loop of T products ``W_h.T @ dz``, the weight gradient as one big product
                 after the loop, and the head's three products (logits, input adjoint,
                 weight gradient). No gates, no loss, no optimiser, no saved values.
* ``xla-gemms-bm`` the same with batch-major loops (``h @ W``), the other layout.

If ``xla-gemms`` alone takes as long as nn.LSTM's whole step, no schedule of XLA
operations reaches 1.0x nn.LSTM: the element-wise work, the loss and Adam come on top.

Usage: ``python bench/floor.py [--hidden 512] [--layers 1] [--rounds 6] [--repeat 3]``
(``--layers 2 --hidden 256`` for the two-layer model: the second layer adds its input
product and input adjoint as big products).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import make_torch_lstm  # noqa: E402
from bench_all import B, T, V, emit, load  # noqa: E402
from bench_jax import make_rnnc_jax  # noqa: E402


def xla_parts(H: int, layers: int) -> dict[str, object]:
    """Zero-argument runners of each product group an XLA LSTM training step needs."""
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    W = jax.random.normal(ks[0], (4 * H, H)) * 0.03
    WT = W.T + 0  # the backward reads a transpose made once, outside the loop
    Wy = jax.random.normal(ks[1], (V, H)) * 0.03
    fm_in = jax.random.normal(ks[2], (T, 4 * H, B))
    bm_in = jax.random.normal(ks[2], (T, B, 4 * H))
    G = jax.random.normal(ks[3], (4 * H, T * B))  # gate adjoints, one column per token
    Hr = jax.random.normal(ks[4], (T * B, H))  # states, one row per token
    Y = jax.random.normal(ks[5], (T * B, V))

    def loop(body, init, xs, reverse=False):
        return jax.jit(lambda xs: jax.lax.scan(body, init, xs, reverse=reverse)[1])


    def fwd_fm(h, x):  # every output of the product is used, so XLA cannot shrink it
        h = jnp.tanh((x + W @ h).reshape(4, H, B).sum(0))
        return h, h

    def fwd_bm(h, x):
        h = jnp.tanh((x + h @ WT).reshape(B, 4, H).sum(1))
        return h, h

    def cell_fwd(carry, x):  # the LSTM cell's element-wise work, no product
        h, c = carry
        z = x + jnp.tile(h, (4, 1))
        i, f, o = (jax.nn.sigmoid(z[k * H:(k + 1) * H]) for k in range(3))
        g = jnp.tanh(z[3 * H:])
        c2 = f * c + i * g
        h2 = o * jnp.tanh(c2)
        return (h2, c2), (i, f, g, o, c)  # the values its backward reads

    def cell_bwd(carry, xs):  # the backward's element-wise work, no product
        dh_rec, dc = carry
        dh_out, (i, f, g, o, c_prev) = xs
        c = f * c_prev + i * g
        tc = jnp.tanh(c)
        dh = dh_out + dh_rec
        dc = dc + dh * o * (1 - tc * tc)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                              dh * tc * o * (1 - o), dc * i * (1 - g * g)])
        return (dz[:H], dc * f), dz

    zH = jnp.zeros((H, B))
    saved = jax.jit(lambda xs: jax.lax.scan(cell_fwd, (zH, zH), xs)[1])(fm_in)
    dh_stack = fm_in[:, :H]
    parts = {
        "fwd loop fm": (loop(fwd_fm, zH, fm_in), fm_in),
        "bwd loop fm": (loop(lambda d, g: ((d := WT @ g + d), d), zH, fm_in, True), fm_in),
        "fwd loop bm": (loop(fwd_bm, jnp.zeros((B, H)), bm_in), bm_in),
        "bwd loop bm": (loop(lambda d, g: ((d := g @ W + d), d), zH.T, bm_in, True), bm_in),
        "weight grad": (jax.jit(lambda G, Hr: G @ Hr), G, Hr),
        "head (3)": (jax.jit(lambda Hr, Y: (Hr @ Wy.T, Y.T @ Hr, Y @ Wy)), Hr, Y),
        "fwd cell": (loop(cell_fwd, (zH, zH), fm_in), fm_in),
        "bwd cell": (jax.jit(lambda xs: jax.lax.scan(cell_bwd, (zH, zH), xs, reverse=True)[1]),
                     (dh_stack, saved)),
    }
    if layers > 1:  # a stacked layer's input product and input adjoint (and its weight grad)
        parts["layer-2 input (3)"] = (jax.jit(lambda G, Hr: (Hr @ WT, G @ Hr, (G.T @ W))), G, Hr)

    def runner(fn, *args):
        return lambda: jax.block_until_ready(fn(*args))

    return {k: runner(*v) for k, v in parts.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    H, L = args.hidden, args.layers

    import tempfile

    import torch

    torch.set_num_threads(2)
    name = f"lstm{H}" if L == 1 else f"lstm{L}x{H}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.py"
        path.write_text(emit(name, "jax"))
        mod = load(path, "floor_mod")
        rows = {
            "torch": make_torch_lstm(V, H, L, T, B)[0],
            "rnnc-jax": make_rnnc_jax(mod)[0],
            **xla_parts(H, L),
        }
        for fn in rows.values():
            fn()
            fn()
        times: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(args.rounds):
            for k, fn in rows.items():
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
    torch_med = statistics.median(times["torch"])
    print(f"# {name}, T={T} B={B}: {args.rounds} interleaved rounds of {args.repeat} calls")
    print(f"{'what':18} {'min ms':>8} {'median ms':>10} {'torch / this (median)':>22}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:18} {min(ts) * 1e3:8.1f} {med * 1e3:10.1f} {torch_med / med:22.2f}")
    med = {k: statistics.median(ts) for k, ts in times.items()}
    per_layer = ("fwd loop", "bwd loop", "weight grad", "fwd cell", "bwd cell")
    for lay in ("fm", "bm"):
        products = [k for k in med if k.endswith(lay) or k in ("weight grad", "head (3)")
                    or k.startswith("layer-2")]
        for label, keys in ((f"products, {lay}", products),
                            (f"+ cells, {lay}", products + ["fwd cell", "bwd cell"])):
            total = sum(med[k] * (L if k.startswith(per_layer) else 1) for k in keys)
            print(f"{label:18} {'':8} {total * 1e3:10.1f} {torch_med / total:22.2f}")
    print(f"(sums of medians; loops, cells and weight gradients x {L} layer(s))")

if __name__ == "__main__":
    main()
