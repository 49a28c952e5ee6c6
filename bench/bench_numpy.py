"""Training throughput of the rnnc NumPy backend against PyTorch ``nn.LSTM``, same run.

Workload (the character-LM benchmark of ``bench/baselines.py``): one-hot input,
vocabulary 65, T=100 steps, batch 32, one LSTM layer with H=512, softmax head,
full BPTT, float32, Adam (lr 2e-3). Each step starts from the zero state. The
generated module's ``train_step`` (forward, generated BPTT, Adam) is timed
against ``nn.LSTM`` + ``nn.Linear`` + ``torch.optim.Adam`` on the same batch;
both get the same number of threads. Prints tokens/s for each and the ratio of
the medians (``--stat min`` for the fastest runs, steadier on a busy machine).

Usage::

    python bench/bench_numpy.py [--H 512] [--T 100] [--B 32] [--repeat 7] [--threads 2]
                                [--save-module out.py] [--profile]

Not a test: run it by hand (it takes a minute or two on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _set_threads(n: int) -> None:
    """Limit BLAS / OpenMP threads (must run before numpy and torch are imported)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))


SPEC = """
model charlm {{
  input onehot(vocab: {V})
  layer {cell}(hidden: {H})
  head softmax per_step
}}
train {{
  data text(path: "input.txt")
  updater adam(lr: 2e-3)
}}
"""


def build_module(V: int, H: int, cell: str = "lstm", save: str | None = None):
    """Compile the benchmark spec with the NumPy backend and load it."""
    from rnnc.backends import get_backend

    from rnnc.compiler import optimize
    from rnnc.gradcheck import load_module
    from rnnc.ir.lower import Sizes, lower
    from rnnc.spec import parse_spec

    spec = parse_spec(SPEC.format(V=V, H=H, cell=cell), "bench_charlm.rnn")
    program = optimize(lower(spec, sizes=Sizes(V, V, None)))
    source = get_backend("numpy").emit(program)
    if save:
        Path(save).write_text(source, encoding="utf-8")
    return load_module(source, "bench_charlm_numpy")


def numpy_train_step(V: int, H: int, T: int, B: int, seed: int = 0, save: str | None = None):
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from common import random_batch

    mod = build_module(V, H, save=save)
    xs, ys = random_batch(V, T, B, seed)
    state = {"params": mod.init_params(seed, "float32")}
    state["opt"] = mod.init_opt_state(state["params"])

    def train_step() -> float:
        params, opt, _, metrics = mod.train_step(state["params"], state["opt"], xs, ys)
        state["params"], state["opt"] = params, opt
        assert all(v.dtype == np.float32 for v in params.values())
        return metrics["loss"]

    return train_step


def torch_train_step(V: int, H: int, T: int, B: int, seed: int = 0):
    sys.path.insert(0, str(ROOT / "bench"))
    from baselines import make_torch_lstm

    train_step, _ = make_torch_lstm(V, H, 1, T, B, seed)
    return train_step


def timed(fn, repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=int, default=65)
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate numpy/torch this many times (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--save-module", metavar="PATH", help="write the generated module here")
    ap.add_argument("--profile", action="store_true", help="cProfile one numpy train step")
    args = ap.parse_args(argv)
    _set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    V, H, T, B = args.V, args.H, args.T, args.B
    np_step = numpy_train_step(V, H, T, B, save=args.save_module)
    th_step = torch_train_step(V, H, T, B)
    if args.profile:
        import cProfile
        import pstats

        np_step()
        prof = cProfile.Profile()
        prof.enable()
        np_step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    samples: dict[str, list[float]] = {"numpy": [], "torch": []}
    for _ in range(args.rounds):  # interleaved, so that machine load hits both alike
        samples["numpy"] += timed(np_step, args.repeat, args.warmup)
        samples["torch"] += timed(th_step, args.repeat, args.warmup)
    stat = statistics.median if args.stat == "median" else min
    tokens = B * T
    tok = {k: tokens / stat(v) for k, v in samples.items()}
    print(f"# character LM: V={V} T={T} B={B} LSTM H={H}, float32, Adam; "
          f"threads={args.threads}, {args.rounds} x {args.repeat} timed steps each")
    for k in ("numpy", "torch"):
        v = samples[k]
        print(f"{k:>6}: {tok[k]:10.0f} tokens/s  (step {stat(v) * 1e3:7.1f} ms, "
              f"min {min(v) * 1e3:7.1f}, max {max(v) * 1e3:7.1f})")
    ratio = tok["numpy"] / tok["torch"]
    print(f"ratio numpy / torch nn.LSTM ({args.stat}): {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
