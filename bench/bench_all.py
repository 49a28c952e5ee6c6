"""rnnc (JAX and NumPy backends) against PyTorch and Flax on every character-LM model, one run.

Workload (``bench/README.md``): one-hot input over V=65 symbols, T=100, B=32, float32,
softmax head on every step, full BPTT, Adam (lr 2e-3). Models:

=================  ==========================================================================
``lstm128``        library ``lstm``, H=128
``lstm512``        library ``lstm``, H=512
``lstm2x256``      two library ``lstm`` layers, H=256
``gru512``         library ``gru`` (reset after the matmul, as nn.GRU), H=512
``peephole512``    library ``lstm(peepholes: true)``, H=512
``peephole512eq``  the same peephole LSTM written as equations in the spec (a custom cell)
``mgu512``         the minimal gated unit written as equations in the spec (a custom cell)
=================  ==========================================================================

Frameworks: ``rnnc-jax`` (generated JAX module, jitted ``train_step`` / ``forward``;
each layer differentiated by its whole-sequence custom VJP), ``rnnc-jax-scan`` (the same
module differentiated by JAX's autodiff through ``lax.scan``: what the VJP buys),
``rnnc-jax-bm`` (only with ``--frameworks``: the VJP's loops batch-major only, what the
feature-major loops buy),
``rnnc-numpy`` (generated NumPy module), ``torch`` (``nn.LSTM``/``nn.GRU``, oneDNN on,
``torch.set_num_threads(cores)``), ``torch_loop`` (hand-written cell, Python loop), ``flax``
(``nn.RNN`` over ``OptimizedLSTMCell``/``GRUCell``/custom cells). The builders and the
table come from ``baselines.py``; ``x nn`` is the ratio to the ``torch`` row of the closest
fused layer (peephole -> nn.LSTM 512, MGU -> nn.GRU 512). After the table: ratios that the
performance targets are stated in, and the cold / warm compile time of the rnnc-jax training
step (two fresh processes sharing one persistent-cache directory, ``bench_jax.compile_latency``).

Usage::

    python bench/bench_all.py --repeat 3                       # everything, ~10 minutes
    python bench/bench_all.py --models lstm512 --frameworks rnnc-jax,torch
    python bench/bench_all.py --hugetlb --repeat 3   # all frameworks under
                                                     # GLIBC_TUNABLES=glibc.malloc.hugetlb=1
    python bench/bench_all.py --malloc-keep          # all frameworks with freed memory
                                                     # kept by glibc (as `rnnc train`)

Not a test: run it by hand. The machine is shared and noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import (  # noqa: E402
    BASELINES,
    LR,
    MODELS,
    ModelSpec,
    add_ratios,
    framework_available,
    measure,
    print_rows,
)
from common import (  # noqa: E402
    cell_flops,
    gemm_peak_gflops,
    machine_info,
    random_batch,
    torch_gemm_peak_gflops,
)


V, T, B = 65, 100, 32

PEEPHOLE_CELL = """cell peephole_eq(x) {
  state h, c
  i = sigmoid(W_i @ x + U_i @ h + p_i * c + b_i)
  f = sigmoid(W_f @ x + U_f @ h + p_f * c + b_f)
  g = tanh(W_g @ x + U_g @ h + b_g)
  c' = f * c + i * g
  o = sigmoid(W_o @ x + U_o @ h + p_o * c' + b_o)
  h' = o * tanh(c')
}
"""

MGU_CELL = """cell mgu_eq(x) {
  state h
  f = sigmoid(W_f @ x + U_f @ h + b_f)
  hc = tanh(W_h @ x + U_h @ (f * h) + b_h)
  h' = (1 - f) * h + f * hc
}
"""

#: name -> (baseline ModelSpec, custom cell text or "", layer line)
RNNC_MODELS: dict[str, tuple[ModelSpec, str, str]] = {
    "lstm128": (MODELS["lstm128"], "", "lstm(hidden: 128)"),
    "lstm512": (MODELS["lstm512"], "", "lstm(hidden: 512)"),
    "lstm2x256": (MODELS["lstm2x256"], "", "lstm(hidden: 256)"),
    "gru512": (MODELS["gru512"], "", "gru(hidden: 512)"),
    "peephole512": (MODELS["peephole512"], "", "lstm(hidden: 512, peepholes: true)"),
    "peephole512eq": (MODELS["peephole512"], PEEPHOLE_CELL, "peephole_eq(hidden: 512)"),
    "mgu512": (MODELS["mgu512"], MGU_CELL, "mgu_eq(hidden: 512)"),
}

ALL_FRAMEWORKS = ("rnnc-jax", "rnnc-jax-scan", "rnnc-numpy", "torch", "torch_loop", "flax")
# Also known, not run by default: the rnnc-jax module with batch-major VJP loops only.
EXTRA_FRAMEWORKS = ("rnnc-jax-bm",)


def spec_text(name: str) -> str:
    """The rnnc spec of one benchmark model."""
    spec, cell, layer = RNNC_MODELS[name]
    layers = "\n".join(f"  layer {layer}" for _ in range(spec.layers))
    return (
        f"{cell}model charlm {{\n  input onehot(vocab: {V})\n{layers}\n"
        f"  head softmax(at: per_step, classes: {V})\n}}\n"
        f"train {{\n  data reber\n  updater adam(lr: {LR})\n}}\n"
    )


def emit(name: str, backend: str) -> str:
    """Generated module source for a benchmark model with rnnc's backend ("jax-scan": the
    JAX backend differentiating through lax.scan instead of its whole-sequence VJP;
    "jax-bm": the custom VJP's loops batch-major only, no feature-major step functions)."""
    from rnnc.backends import get_backend
    from rnnc.compiler import build
    from rnnc.ir.lower import Sizes
    from rnnc.spec import parse_spec

    program = build(parse_spec(spec_text(name), f"bench_{name}.rnn"), Sizes(V, V))
    if backend in ("jax-scan", "jax-bm"):
        from rnnc.backends.jax.emitter import emit as emit_jax

        if backend == "jax-bm":
            return emit_jax(program, layout="batch")
        return emit_jax(program, vjp=False)
    return get_backend(backend).emit(program)


def load(path: Path, modname: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_rnnc_numpy(mod: Any, seed: int = 0):
    """(train_step, infer_step) over a generated NumPy module (as bench_numpy's)."""
    xs, ys = random_batch(V, T, B, seed)
    params = mod.init_params(seed, "float32")
    state = {"params": params, "opt": mod.init_opt_state(params)}

    def train_step() -> float:
        state["params"], state["opt"], _, metrics = mod.train_step(
            state["params"], state["opt"], xs, ys
        )
        return float(metrics["loss"])

    def infer_step() -> None:
        mod.forward(state["params"], xs)

    return train_step, infer_step


def _row_error(fw: str, name: str, spec: ModelSpec, e: Exception) -> dict[str, Any]:
    print(f"# {fw}/{name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return {
        "framework": fw,
        "model": name,
        "kind": spec.kind,
        "H": spec.H,
        "layers": spec.layers,
        "error": f"{type(e).__name__}: {e}",
    }


def _find(rows, fw, model):
    for r in rows:
        if r.get("framework") == fw and r.get("model") == model and "train_tok_s" in r:
            return r
    return None


def _merge(
    row: dict[str, Any], new: dict[str, Any], spec: ModelSpec, peak: float, stat: str
) -> dict[str, Any]:
    """``row`` with ``new``'s timed samples added and its statistics recomputed."""
    for phase, training in (("train", True), ("infer", False)):
        samples = row[f"{phase}_samples_s"] + new[f"{phase}_samples_s"]
        med = statistics.median(samples)
        q25, q75 = np.percentile(samples, [25.0, 75.0])
        t_step = min(samples) if stat == "min" else med
        gflops = cell_flops(spec.kind, V, spec.H, T, B, spec.layers, training) / t_step / 1e9
        row[f"{phase}_round_ms"] = row[f"{phase}_round_ms"] + new[f"{phase}_round_ms"]
        row.update(
            {
                f"{phase}_ms": med * 1e3,
                f"{phase}_step_ms": t_step * 1e3,
                f"{phase}_min_ms": min(samples) * 1e3,
                f"{phase}_max_ms": max(samples) * 1e3,
                f"{phase}_iqr_pct": 100.0 * (q75 - q25) / med,
                f"{phase}_tok_s": B * T / t_step,
                f"{phase}_gflops": gflops,
                f"{phase}_peak": gflops / peak,
                f"{phase}_samples_s": samples,
            }
        )
    return row


def _stat(samples: list[float], stat: str) -> float:
    return min(samples) if stat == "min" else statistics.median(samples)


def round_ratios(a: dict[str, Any], b: dict[str, Any], phase: str, ratio: float) -> list[float]:
    """``ratio`` (of a's throughput to b's, over all rounds) as measured in each round alone:
    the rounds interleave every framework of a model, so a round's ratio compares steps
    run under the same machine load. Empty without per-round times for both rows."""
    ta, tb = a.get(f"{phase}_round_ms"), b.get(f"{phase}_round_ms")
    if not ta or not tb or len(ta) != len(tb):
        return []
    overall = b[f"{phase}_step_ms"] / a[f"{phase}_step_ms"]
    return [ratio * (y / x) / overall for x, y in zip(ta, tb, strict=True)]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each as (measured ratio, goal, met?) plus the ratio in each
    interleaved round ("rounds"), which shows how far the machine's load moved it."""
    out = []

    def ratio(what, num, den, goal, phase="train", per_flop=False):
        a, b = _find(rows, *num), _find(rows, *den)
        if a is None or b is None:
            return
        key = f"{phase}_gflops" if per_flop else f"{phase}_tok_s"
        r = a[key] / b[key]
        rounds = round_ratios(a, b, phase, r) if a["model"] == b["model"] else []
        out.append({"target": what, "ratio": r, "goal": goal, "met": r >= goal, "rounds": rounds})

    for m in ("lstm512", "lstm2x256"):
        ratio(f"rnnc-jax / nn.LSTM train, {m}", ("rnnc-jax", m), ("torch", m), 1.0)
    ratio("rnnc-jax / nn.GRU train, gru512", ("rnnc-jax", "gru512"), ("torch", "gru512"), 1.2)
    for m in RNNC_MODELS:
        flax_model = "peephole512" if m == "peephole512eq" else m
        ratio(f"rnnc-jax / flax train, {m}", ("rnnc-jax", m), ("flax", flax_model), 1.3)
    for m, loop in (("peephole512eq", "peephole512"), ("mgu512", "mgu512")):
        ratio(
            f"rnnc-jax / torch hand-written loop train, {m}",
            ("rnnc-jax", m),
            ("torch_loop", loop),
            2.0,
        )
        ratio(
            f"rnnc-jax GFLOP/s {m} / lstm512 (per FLOP)",
            ("rnnc-jax", m),
            ("rnnc-jax", "lstm512"),
            0.9,
            per_flop=True,
        )
    ratio(
        "rnnc-numpy / nn.LSTM train, lstm512", ("rnnc-numpy", "lstm512"), ("torch", "lstm512"), 0.6
    )
    for m in RNNC_MODELS:  # not a target of the issue: what the custom VJP buys
        ratio(
            f"rnnc-jax VJP / autodiff through scan, {m}", ("rnnc-jax", m), ("rnnc-jax-scan", m), 1.0
        )
    for m in RNNC_MODELS:  # nor this: what the feature-major loops buy (rnnc-jax-bm rows)
        ratio(f"rnnc-jax / batch-major loops, {m}", ("rnnc-jax", m), ("rnnc-jax-bm", m), 1.0)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(RNNC_MODELS))
    ap.add_argument("--frameworks", default=",".join(ALL_FRAMEWORKS))
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per step (default 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved rounds of --repeat timed calls per framework (default 2)",
    )
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count() or 1,
        help="torch.set_num_threads (default: the CPUs this process may use)",
    )
    ap.add_argument("--no-compile-latency", action="store_true")
    ap.add_argument(
        "--hugetlb",
        action="store_true",
        help="re-run this script with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
        "(applies to every framework of the run)",
    )
    ap.add_argument(
        "--malloc-keep",
        action="store_true",
        help="set glibc up to keep freed memory first (one arena, no mmap), as `rnnc train` does "
        "(rnnc/train/hostmem.py; applies to every framework of the run)",
    )
    ap.add_argument("--keep-modules", metavar="DIR", help="write the generated modules here")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.malloc_keep:
        from rnnc.train.hostmem import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--malloc-keep: glibc's mallopt is not available here")

    if args.hugetlb and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
        env = dict(os.environ)
        env["GLIBC_TUNABLES"] = ":".join(
            t for t in (env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1") if t
        )
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for m in models:
        if m not in RNNC_MODELS:
            raise SystemExit(f"unknown model {m}; known: {', '.join(RNNC_MODELS)}")
    for f in frameworks:
        if f not in ALL_FRAMEWORKS + EXTRA_FRAMEWORKS:
            known = ", ".join(ALL_FRAMEWORKS + EXTRA_FRAMEWORKS)
            raise SystemExit(f"unknown framework {f}; known: {known}")

    if framework_available("torch"):
        import baselines
        import torch

        torch.set_num_threads(args.threads)
        baselines._TORCH_THREADS_SET = True
    info = machine_info()
    peak_np = gemm_peak_gflops()
    peak_torch = torch_gemm_peak_gflops() if framework_available("torch") else None
    peak = peak_start = max(p for p in (peak_np, peak_torch) if p)
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"# GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} "
        f"malloc-keep={args.malloc_keep} torch threads={args.threads}"
    )
    print(
        f"# V={V} T={T} B={B} tokens/step={B * T} float32 Adam(lr={LR}) full BPTT;"
        f" repeat={args.repeat} warmup={args.warmup} stat={args.stat}"
    )
    print(
        f"# float32 GEMM 1024^3 peak: numpy {peak_np:.1f} GFLOP/s, torch "
        f"{peak_torch or float('nan'):.1f} GFLOP/s; 'peak' = fraction of {peak:.1f}",
        flush=True,
    )

    moddir = Path(args.keep_modules or tempfile.mkdtemp(prefix="rnnc-bench-all-"))
    moddir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    done_torch: set[ModelSpec] = set()
    kw = dict(
        V=V, T=T, B=B, repeat=args.repeat, warmup=args.warmup, peak_gflops=peak, stat=args.stat
    )
    for name in models:
        spec = RNNC_MODELS[name][0]
        ref = ModelSpec(
            {"peephole": "lstm", "mgu": "gru"}.get(spec.kind, spec.kind), spec.H, spec.layers
        )
        jobs = []  # (framework, ModelSpec of the row, model name, train_step, infer_step)
        for fw in (["torch-ref"] if "torch" not in frameworks or ref != spec else []) + frameworks:
            t0 = time.perf_counter()
            try:
                if fw in ("rnnc-jax", "rnnc-jax-scan", "rnnc-jax-bm", "rnnc-numpy"):
                    backend = fw.split("-", 1)[1]
                    path = moddir / f"{name}_{backend.replace('-', '_')}.py"
                    path.write_text(emit(name, backend))
                    mod = load(path, f"bench_{name}_{backend.replace('-', '_')}")
                    if backend.startswith("jax"):
                        from bench_jax import make_rnnc_jax

                        steps = make_rnnc_jax(mod)
                    else:
                        steps = make_rnnc_numpy(mod)
                    jobs.append((fw, spec, name, *steps))
                    continue
                base_fw, sp = ("torch", ref) if fw == "torch-ref" else (fw, spec)
                if (base_fw, sp.kind) not in BASELINES or not framework_available(base_fw):
                    continue
                if base_fw == "torch":
                    if sp in done_torch:
                        continue
                    done_torch.add(sp)
                elif name == "peephole512eq" and "peephole512" in models:
                    continue  # same baseline as the peephole512 rows
                steps = BASELINES[(base_fw, sp.kind)](V, sp.H, sp.layers, T, B, 0)
                jobs.append((base_fw, sp, sp.name, *steps))
            except Exception as e:  # keep the other rows
                rows.append(_row_error(fw, name, spec, e))
            finally:
                print(
                    f"# built {fw}/{name}: {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        # interleaved rounds: machine load hits every framework of this model alike
        group: dict[int, dict[str, Any]] = {}
        for rnd in range(args.rounds):
            for i, (fw, sp, model, train_step, infer_step) in enumerate(jobs):
                if i in group and "error" in group[i]:
                    continue
                t0 = time.perf_counter()
                try:
                    row = measure(
                        fw,
                        sp,
                        train_step,
                        infer_step,
                        **dict(kw, warmup=args.warmup if rnd == 0 else 1),
                    )
                except Exception as e:
                    group[i] = _row_error(fw, model, sp, e)
                    continue
                row["model"] = model
                for phase in ("train", "infer"):  # this round's step time, for ratio ranges
                    row[f"{phase}_round_ms"] = [_stat(row[f"{phase}_samples_s"], args.stat) * 1e3]
                group[i] = row if rnd == 0 else _merge(group[i], row, sp, peak, args.stat)
                print(
                    f"# round {rnd + 1}/{args.rounds} {fw}/{model}:"
                    f" {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        rows.extend(group[i] for i in sorted(group))
        del jobs

    # the GEMM peak again (the machine is shared): the best of both measurements counts
    peak_end = max(gemm_peak_gflops(), torch_gemm_peak_gflops() if peak_torch else 0.0)
    if peak_end > peak:
        for r in rows:
            for phase in ("train", "infer"):
                if r.get(f"{phase}_gflops"):
                    r[f"{phase}_peak"] = r[f"{phase}_gflops"] / peak_end
        peak = peak_end
    print(
        f"# GEMM peak used for 'peak': {peak:.1f} GFLOP/s (best of start {peak_start:.1f}"
        f" and end {peak_end:.1f})"
    )
    add_ratios(rows)
    print()
    print_rows(rows)
    print(
        "\n# tok/s = B*T / step time; iqr% = interquartile range / median; GFLOP/s counts"
        " matmuls only (common.cell_flops); peak = GFLOP/s / measured GEMM peak;"
        " x nn = tok/s / that of the torch row named in 'vs'."
    )
    firsts = [
        r for r in rows if r.get("framework") in ("rnnc-jax", "flax") and "train_first_s" in r
    ]
    if firsts:
        print(
            "# first call (compile) s: "
            + "; ".join(
                f"{r['framework']} {r['model']} train {r['train_first_s']:.1f}"
                f" infer {r['infer_first_s']:.1f}"
                for r in firsts
            )
        )

    goals = targets(rows)
    if goals:
        print("\n# targets (same-run ratios; 'rounds': the ratio in each interleaved round)")
        for g in goals:
            spread = ", ".join(f"{x:.2f}" for x in g["rounds"])
            line = (
                f"  {g['target']:<52} {g['ratio']:6.2f}  goal >= {g['goal']:.1f}  "
                f"{'met' if g['met'] else 'NOT met':<7}"
                + (f"  rounds {spread}" if len(g["rounds"]) > 1 else "")
            )
            print(line.rstrip())

    latency = []
    if not args.no_compile_latency and "rnnc-jax" in frameworks:
        from bench_jax import compile_latency, print_latency

        name = "lstm512" if "lstm512" in models else models[0]
        ldir = moddir / "latency"
        ldir.mkdir(exist_ok=True)
        (ldir / "charlm_jax.py").write_text(emit(name, "jax"))
        print(
            f"\n# rnnc-jax compile latency ({name}): two fresh processes, one cache dir;"
            " goal: cold compile <= 1.5 s, warm <= 0.3 s (compile s = trace + lower + XLA compile"
            " or cache load, JAX's own timings of the first train_step call)"
        )
        latency = compile_latency(ldir)
        print_latency(latency)
    if args.json:
        for r in rows:
            r.pop("train_samples_s", None)
            r.pop("infer_samples_s", None)
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "peak_gflops": {"numpy": peak_np, "torch": peak_torch},
                    "rows": rows,
                    "targets": goals,
                    "latency": latency,
                    "flops": {
                        n: cell_flops(
                            RNNC_MODELS[n][0].kind,
                            V,
                            RNNC_MODELS[n][0].H,
                            T,
                            B,
                            RNNC_MODELS[n][0].layers,
                        )
                        for n in models
                    },
                },
                indent=1,
                default=str,
            )
        )
    return rows


if __name__ == "__main__":
    main()
