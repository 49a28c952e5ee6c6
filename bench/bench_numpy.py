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
                                [--save-module out.py] [--module gen.py ...] [--profile]

``--module`` times already generated modules (of the same benchmark spec) instead
of compiling it, e.g. on a machine without rnnc's dependencies; repeat it to
compare variants side by side.

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


def load_file(path: str):
    """A generated module from a file (it imports numpy only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def numpy_train_step(V: int, H: int, T: int, B: int, seed: int = 0, save: str | None = None,
                     path: str | None = None):
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from common import random_batch

    mod = load_file(path) if path else build_module(V, H, save=save)
    xs, ys = random_batch(V, T, B, seed)
    state = {"params": mod.init_params(seed, "float32")}
    state["opt"] = mod.init_opt_state(state["params"])

    def train_step() -> float:
        params, opt, _, metrics = mod.train_step(state["params"], state["opt"], xs, ys)
        state["params"], state["opt"] = params, opt
        assert all(v.dtype == np.float32 for v in params.values())
        return metrics["loss"]

    return train_step


def torch_train_step(V: int, H: int, T: int, B: int, seed: int = 0, mkldnn: bool = True):
    """nn.LSTM + nn.Linear + Adam (bench/baselines.py); mkldnn=False: ATen's own LSTM."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import baselines

    threads = torch.get_num_threads()
    baselines._TORCH_THREADS_SET = True  # keep our thread count (it would take every core)
    train_step, _ = baselines.make_torch_lstm(V, H, 1, T, B, seed)
    assert torch.get_num_threads() == threads

    def step():
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            return train_step()

    return step


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
    ap.add_argument("--module", metavar="PATH", action="append", default=[],
                    help="time this generated module instead of compiling (repeatable)")
    ap.add_argument("--profile", action="store_true", help="cProfile one numpy train step")
    ap.add_argument("--torch-native", action="store_true",
                    help="also time nn.LSTM with oneDNN off (ATen's own kernels)")
    args = ap.parse_args(argv)
    _set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    V, H, T, B = args.V, args.H, args.T, args.B
    steps = {}
    for path in args.module or [None]:
        name = "numpy" if path is None else f"numpy:{Path(path).stem}"
        steps[name] = numpy_train_step(V, H, T, B, save=args.save_module, path=path)
    steps["torch"] = torch_train_step(V, H, T, B)
    if args.torch_native:
        steps["torch:no-onednn"] = torch_train_step(V, H, T, B, mkldnn=False)
    if args.profile:
        import cProfile
        import pstats

        first = next(iter(steps.values()))
        first()
        prof = cProfile.Profile()
        prof.enable()
        first()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):  # interleaved, so that machine load hits every row alike
        for k, fn in steps.items():
            samples[k] += timed(fn, args.repeat, args.warmup)
    stat = statistics.median if args.stat == "median" else min
    tokens = B * T
    tok = {k: tokens / stat(v) for k, v in samples.items()}
    print(f"# character LM: V={V} T={T} B={B} LSTM H={H}, float32, Adam; "
          f"threads={args.threads}, {args.rounds} x {args.repeat} timed steps each")
    width = max(len(k) for k in steps)
    for k, v in samples.items():
        print(f"{k:>{width}}: {tok[k]:10.0f} tokens/s  (step {stat(v) * 1e3:7.1f} ms, "
              f"min {min(v) * 1e3:7.1f}, max {max(v) * 1e3:7.1f})")
    ratios = {k: tok[k] / tok["torch"] for k in steps if k.startswith("numpy")}
    for k, r in ratios.items():
        print(f"ratio {k} / torch nn.LSTM ({args.stat}): {r:.3f}")
        if "torch:no-onednn" in tok:
            print(f"ratio {k} / torch nn.LSTM without oneDNN ({args.stat}): "
                  f"{tok[k] / tok['torch:no-onednn']:.3f}")
    return max(ratios.values())


if __name__ == "__main__":
    main()
