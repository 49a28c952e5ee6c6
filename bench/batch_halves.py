"""Does splitting the batch into independent lax.scan loops help on a 2-core CPU?

One LSTM cell scan (T=100, B=32) run as 1, 2 or 4 independent loops over slices of the
batch, forward and ``jax.grad``, timed interleaved in one process (min / median of 15):
docs/performance.md, "Session 8". Usage: ``python bench/batch_halves.py [H]``.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(H: int = 512, B: int = 32, T: int = 100, calls: int = 15) -> None:
    rng = np.random.default_rng(0)
    U = jnp.asarray(rng.standard_normal((H, 4 * H)) * 0.05, jnp.float32)
    xw = jnp.asarray(rng.standard_normal((T, B, 4 * H)), jnp.float32)

    def cell(carry, g_in):
        h, c = carry
        i, f, o, u = jnp.split(g_in + h @ U, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    def run(x):
        z = jnp.zeros((x.shape[1], H), jnp.float32)
        return jax.lax.scan(cell, (z, z), x)[1]

    def fwd(x, k):
        return jnp.concatenate([run(p) for p in jnp.split(x, k, axis=1)], axis=1)

    fns = {}
    for k in (1, 2, 4):
        fns[f"forward, {k} loop(s)"] = jax.jit(lambda x, k=k: fwd(x, k))
        fns[f"grad, {k} loop(s)"] = jax.jit(jax.grad(lambda x, k=k: jnp.sum(fwd(x, k) ** 2)))
    for f in fns.values():
        jax.block_until_ready(f(xw))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(calls):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(xw))
            times[k].append(time.perf_counter() - t)
    print(f"H={H} B={B} T={T}: min / median ms of {calls} interleaved calls")
    for k, v in times.items():
        v.sort()
        print(f"  {k:<20} {v[0] * 1e3:7.1f} / {v[len(v) // 2] * 1e3:7.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
