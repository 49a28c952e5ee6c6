"""GPU check of an rnnc-generated JAX module: GPU vs CPU agreement and training speed.

Workload: character LM, one-hot over V=65 symbols, T=100, B=32, one LSTM layer of
H=512, softmax head on every step, float32, Adam, full BPTT.

The GPU machine needs only ``jax[cuda]`` and ``numpy`` (``torch`` with CUDA for the
cuDNN row, optional) and no rnnc: generate the module where rnnc is installed, copy
it (and this script) over, run it there::

    python bench/gpu_check.py --emit gpu_out/            # here: writes gpu_out/charlm_jax.py
    python bench/gpu_check.py --module gpu_out/charlm_jax.py   # on the GPU machine

It checks the loss, the outputs of ``forward`` and every gradient of ``loss_and_grad``
on the GPU against the CPU (relative error <= 1e-4, with float32 matmuls at
"highest" precision: XLA's default on recent GPUs uses TF32, ~1e-3), then times
``train_step`` and ``forward`` on the GPU (default precision) next to PyTorch
``nn.LSTM`` on cuDNN when torch with CUDA is there, and prints a table. Exit status 1
when the agreement check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


V, T, B = 65, 100, 32
LR = 2e-3
TOL = 1e-4

SPEC = """model charlm {{
  input onehot(vocab: {V})
  layer lstm(hidden: {H})
  head softmax(at: per_step, classes: {V})
}}
train {{
  data reber
  updater adam(lr: {lr})
}}
"""


def emit(
    out_dir: Path, H: int, unrolls: list[int] | None = None, autodiff: bool = False
) -> list[Path]:
    """Generate the module with rnnc (run this where rnnc is installed).

    Writes ``charlm_jax.py`` and, for each extra lax.scan unroll factor,
    ``charlm_jax_u<k>.py``; with ``autodiff``, ``charlm_jax_autodiff.py`` too (JAX's
    autodiff through ``lax.scan`` instead of the generated whole-sequence custom VJP).
    """
    from rnnc.backends.jax.emitter import emit as emit_jax
    from rnnc.compiler import build
    from rnnc.ir.lower import Sizes
    from rnnc.spec import parse_spec

    program = build(parse_spec(SPEC.format(V=V, H=H, lr=LR), "charlm.rnn"), Sizes(V, V))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "charlm_jax.py"]
    paths[0].write_text(emit_jax(program))
    for k in unrolls or []:
        paths.append(out_dir / f"charlm_jax_u{k}.py")
        paths[-1].write_text(emit_jax(program, unroll=k))
    if autodiff:
        paths.append(out_dir / "charlm_jax_autodiff.py")
        paths[-1].write_text(emit_jax(program, vjp=False))
    return paths


def set_batch(b: int) -> None:
    global B
    B = b


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, n: int, warmup: int = 3) -> tuple[float, float]:
    """(first call seconds, median seconds of n further calls); fn must block."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return first, times[len(times) // 2]


def rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def check_agreement(m, gpu, cpu, xs, ys) -> tuple[bool, list[tuple[str, float]]]:
    """loss, forward outputs and every gradient on GPU vs CPU, float32, highest precision."""
    import jax

    params = m.init_params(0, "float32")
    out = {}
    with jax.default_matmul_precision("highest"):
        for name, dev in (("gpu", gpu), ("cpu", cpu)):
            p, x, y = jax.device_put((params, xs, ys), dev)
            probs, _ = m.forward(p, x)
            loss, grads, _ = m.loss_and_grad(p, x, y)
            out[name] = jax.device_get((probs, loss, grads))
    (pg, lg, gg), (pc, lc, gc) = out["gpu"], out["cpu"]
    errs = [("loss", rel_err(lg, lc)), ("forward", rel_err(pg, pc))]
    errs += [(f"grad {k}", rel_err(gg[k], gc[k])) for k in gc]
    return all(e <= TOL for _, e in errs), errs


def time_rnnc(m, dev, xs, ys, n: int) -> dict:
    import jax

    params = jax.device_put(m.init_params(0, "float32"), dev)
    x, y = jax.device_put((xs, ys), dev)
    st = {"p": params, "o": jax.device_put(m.init_opt_state(params), dev)}

    def train():
        st["p"], st["o"], _, met = m.train_step(st["p"], st["o"], x, y)
        float(met["loss"])

    def infer():
        m.forward(st["p"], x)[0].block_until_ready()

    t_first, t_train = timed(train, n)
    i_first, t_infer = timed(infer, n)
    return {"train_first": t_first, "train": t_train, "infer_first": i_first, "infer": t_infer}


def time_torch(H: int, xs, ys, n: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(V, H, batch_first=True).to(dev)
    head = torch.nn.Linear(H, V).to(dev)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=LR)
    tokens = torch.as_tensor(xs, device=dev).long()
    targets = torch.as_tensor(ys, device=dev).long().reshape(-1)

    def forward():
        y, _ = rnn(F.one_hot(tokens, V).float())
        return head(y)

    def train():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward().reshape(-1, V), targets)
        loss.backward()
        opt.step()
        loss.item()

    def infer():
        with torch.inference_mode():
            forward()
        torch.cuda.synchronize()

    t_first, t_train = timed(train, n)
    i_first, t_infer = timed(infer, n)
    return {
        "train_first": t_first,
        "train": t_train,
        "infer_first": i_first,
        "infer": t_infer,
        "version": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
    }


def table(rows: list[dict]) -> str:
    cols = ["what", "device", "train ms", "train tok/s", "infer ms", "infer tok/s", "1st train s"]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def row(what: str, device: str, t: dict) -> dict:
    tokens = B * T
    return {
        "what": what,
        "device": device,
        "train ms": f"{t['train'] * 1e3:.2f}",
        "train tok/s": f"{tokens / t['train']:,.0f}",
        "infer ms": f"{t['infer'] * 1e3:.2f}",
        "infer tok/s": f"{tokens / t['infer']:,.0f}",
        "1st train s": f"{t['train_first']:.2f}",
    }


def run(modules: list[Path], n: int, cpu_timing: bool) -> int:
    import jax
    import numpy as np

    module = modules[0]
    m = load(module)
    print(f"# jax {jax.__version__}; devices: {jax.devices()}")
    gpus = [d for d in jax.devices() if d.platform != "cpu"]
    if not gpus:
        print("# no GPU visible to JAX: nothing to check")
        return 1
    gpu, cpu = gpus[0], jax.devices("cpu")[0]
    print(
        f"# GPU: {getattr(gpu, 'device_kind', gpu)}; module: {module.name}, "
        f"{len(m.PARAM_SHAPES)} parameter arrays, H = {m.MODEL['layers'][0]['hidden']}"
    )
    rng = np.random.default_rng(0)
    xs = rng.integers(0, V, (B, T)).astype(np.int32)
    ys = rng.integers(0, V, (B, T)).astype(np.int32)

    ok, errs = check_agreement(m, gpu, cpu, xs, ys)
    worst = max(errs, key=lambda e: e[1])
    print(
        f"# GPU vs CPU (float32, highest matmul precision): loss rel err {errs[0][1]:.2e}, "
        f"forward {errs[1][1]:.2e}, worst {worst[0]} {worst[1]:.2e} -> "
        + ("OK" if ok else f"MISMATCH (tolerance {TOL})")
    )

    rows = []
    for path in modules:
        mod = m if path == module else load(path)
        unroll = mod.UNROLL.get("gpu") if isinstance(mod.UNROLL, dict) else mod.UNROLL
        what = f"rnnc-jax {path.stem} (unroll {unroll})"
        try:
            rows.append(row(what, "gpu", time_rnnc(mod, gpu, xs, ys, n)))
        except Exception as e:  # keep the other rows
            print(f"# {what} failed: {type(e).__name__}: {e}")
    H = m.MODEL["layers"][0]["hidden"]
    try:
        t = time_torch(H, xs, ys, n)
    except Exception as e:
        print(f"# torch row failed: {type(e).__name__}: {e}")
        t = None
    if t is not None:
        rows.append(row(f"torch {t['version']} nn.LSTM (cuDNN {t['cudnn']})", "gpu", t))
    else:
        print("# torch with CUDA not available: no cuDNN row")
    if cpu_timing:
        rows.append(
            row(f"rnnc-jax {module.stem}", "cpu", time_rnnc(m, cpu, xs, ys, max(3, n // 10)))
        )
    print(table(rows))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--emit", metavar="DIR", type=Path, help="generate DIR/charlm_jax.py with rnnc and exit"
    )
    ap.add_argument(
        "--unroll",
        default="",
        help="with --emit: also write variants with these lax.scan unroll factors (e.g. 4,10)",
    )
    ap.add_argument(
        "--module",
        metavar="PATH",
        type=Path,
        action="append",
        help="a generated module (repeat to time several; the first is checked); "
        "default: generate one now, which needs rnnc",
    )
    ap.add_argument("--H", type=int, default=512, help="LSTM width for --emit (default 512)")
    ap.add_argument(
        "--autodiff",
        action="store_true",
        help="with --emit (or no --module): also a variant differentiated by JAX's autodiff "
        "through lax.scan instead of the generated custom VJP",
    )
    ap.add_argument("--batch", type=int, default=B, help=f"batch size (default {B})")
    ap.add_argument("--steps", type=int, default=30, help="timed calls (default 30)")
    ap.add_argument("--cpu-timing", action="store_true", help="also time the module on CPU")
    args = ap.parse_args(argv)
    set_batch(args.batch)
    unrolls = [int(u) for u in args.unroll.split(",") if u.strip()]
    if args.emit is not None:
        for path in emit(args.emit, args.H, unrolls, args.autodiff):
            print(path)
        return 0
    modules = args.module
    if not modules:
        import tempfile

        modules = emit(Path(tempfile.mkdtemp(prefix="rnnc-gpu-")), args.H, unrolls, args.autodiff)
    return run(modules, args.steps, args.cpu_timing)


if __name__ == "__main__":
    sys.exit(main())
