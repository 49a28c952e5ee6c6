"""GPU check of an rnnc-generated JAX module (char LM: V=65, T=100, B=32, LSTM H=512, float32).

The GPU machine needs only jax (with CUDA), numpy and optionally torch: generate
the module here, copy both files there, run there::

    rnnc compile bench/charlm512.rnn --backend jax -o model_jax.py
    python bench/gpu_smoke.py          # with model_jax.py importable

Checks GPU loss and gradients against the CPU (float32; relative 1e-4; set
JAX_DEFAULT_MATMUL_PRECISION=highest, since XLA's default TF32 matmuls on
Hopper differ by ~1e-3) and times a training step against PyTorch nn.LSTM on
cuDNN.
"""
import time

import jax
import jax.numpy as jnp
import model_jax as M  # noqa: E402 - generated next to this script
import numpy as np


print("jax", jax.__version__, "devices", jax.devices())
V, T, B, H = 65, 100, 32, 512
rng = np.random.default_rng(0)
xs = rng.integers(0, V, (B, T)).astype(np.int32)
ys = rng.integers(0, V, (B, T)).astype(np.int32)
p_np = M.init_params(0, "float32")

def run_on(dev):
    with jax.default_device(dev):
        p = {k: jax.device_put(jnp.asarray(v), dev) for k, v in p_np.items()}
        loss, g, _ = M.loss_and_grad(p, jnp.asarray(xs), jnp.asarray(ys))
        return float(loss), {k: np.asarray(v) for k, v in g.items()}

gpu = jax.devices()[0]
cpu = jax.devices("cpu")[0]
lg, gg = run_on(gpu)
lc, gc = run_on(cpu)
worst = max(float(np.max(np.abs(gg[k] - gc[k])) / (np.max(np.abs(gc[k])) + 1e-12)) for k in gc)
print(f"loss gpu {lg:.6f} cpu {lc:.6f} |diff| {abs(lg-lc):.2e}; worst grad rel err {worst:.2e}",
      "OK" if worst <= 1e-4 and abs(lg - lc) <= 1e-4 * abs(lc) else "MISMATCH")

def bench(step, n=30):
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n

with jax.default_device(gpu):
    params = {k: jnp.asarray(v) for k, v in p_np.items()}
    opt = M.init_opt_state(params)
    X, Y = jnp.asarray(xs), jnp.asarray(ys)
    box = [params, opt]
    def jstep():
        p, o, _, m = M.train_step(box[0], box[1], X, Y)
        jax.block_until_ready(p)
        box[0], box[1] = p, o
    tj = bench(jstep)
rows = [("rnnc-jax (GPU)", tj)]
try:
    import torch
    import torch.nn.functional as F
    dev = "cuda"
    lstm = torch.nn.LSTM(V, H, batch_first=True).to(dev)
    head = torch.nn.Linear(H, V).to(dev)
    opt_t = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=2e-3)
    xt = F.one_hot(torch.as_tensor(xs, dtype=torch.long, device=dev), V).float()
    yt = torch.as_tensor(ys, dtype=torch.long, device=dev)
    def tstep():
        opt_t.zero_grad()
        out, _ = lstm(xt)
        loss = F.cross_entropy(head(out).reshape(-1, V), yt.reshape(-1))
        loss.backward()
        opt_t.step()
        torch.cuda.synchronize()
    rows.append(("PyTorch nn.LSTM (cuDNN)", bench(tstep)))
    print("cudnn", torch.backends.cudnn.version())
except Exception as e:  # noqa
    print("torch row skipped:", e)
base = rows[-1][1]
print(f"{'impl':<26}{'ms/step':>10}{'tokens/s':>12}{'x torch':>9}")
for name, t in rows:
    print(f"{name:<26}{t*1e3:>10.2f}{B*T/t:>12.0f}{base/t:>9.2f}")
