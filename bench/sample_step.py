"""Per-character cost of ``rnnc sample``'s loop (``sample_text``) for generated modules.

Loads each module file given (e.g. the JAX module compiled before and after a change,
and the NumPy one, of the same spec) and times ``sample_text`` on each, interleaved in
one process: ``--rounds`` rounds of ``--length`` characters, min / median ms per
character. The texts drawn are compared (the same seed for every module).

A module without ``prepare_step`` (compiled before it existed) runs the plain step,
as ``sample_text`` does for it.

Usage::

    rnnc compile SPEC --backend jax -o new.py      # SPEC: onehot(vocab: auto) over a
    python bench/sample_step.py old.py new.py numpy.py --vocab 5000   # 5000-symbol text
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rnnc.train.sampling import sample_text  # noqa: E402


def load(path: str, i: int):
    spec = importlib.util.spec_from_file_location(f"sample_step_module_{i}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="+")
    ap.add_argument("--vocab", type=int, required=True, help="the modules' vocabulary size")
    ap.add_argument("--length", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    vocab = [chr(0x4E00 + i) for i in range(args.vocab)]
    mods = [load(p, i) for i, p in enumerate(args.modules)]
    params = [m.init_params(0) for m in mods]

    def run(i: int, n: int) -> tuple[float, str]:
        rng = np.random.default_rng(1)
        t = time.perf_counter()
        text = sample_text(mods[i], params[i], vocab, vocab[0], n, 1.0, rng)
        return (time.perf_counter() - t) / n * 1e3, text

    for i in range(len(mods)):
        run(i, 5)  # compile
    times: list[list[float]] = [[] for _ in mods]
    texts = [""] * len(mods)
    for _ in range(args.rounds):
        for i in range(len(mods)):
            ms, texts[i] = run(i, args.length)
            times[i].append(ms)
    print("the same text from every module:", len(set(texts)) == 1)
    for path, t in zip(args.modules, times, strict=True):
        print(f"{path}: ms per character min {min(t):.3f} median {statistics.median(t):.3f}")


if __name__ == "__main__":
    main()
