"""rnnc's JAX backend on the character-LM workload, next to PyTorch and Flax.

Workload (as ``bench/baselines.py``): one-hot input over a 65-symbol vocabulary,
T=100, B=32, one LSTM layer of H=512, softmax head on every step, float32, Adam
(lr 2e-3), full BPTT. Rows:

``rnnc-jax``      the generated module's ``train_step`` / ``forward`` (jitted);
                  ``--unroll 1,2,4`` adds one row per lax.scan unroll factor
``torch``         ``nn.LSTM`` (oneDNN's fused RNN on CPU) + ``nn.Linear``
``flax``          ``nn.RNN(nn.OptimizedLSTMCell)`` + ``nn.Dense``, jitted, optax.adam

Then the compile latency of the generated module: the first call of ``train_step``
and ``forward`` in a fresh process with an empty persistent compilation cache (cold)
and in a second process sharing that cache (warm), see ``backends/jax/cache.py``.

Usage::

    python bench/bench_jax.py                      # table + compile latency
    python bench/bench_jax.py --unroll 1,2,4 --repeat 10 --stat min
    python bench/bench_jax.py --frameworks rnnc-jax --no-compile-latency
    python bench/bench_jax.py --module a.py --module b.py   # pre-generated modules, no rnnc
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import (  # noqa: E402
    BASELINES,
    LR,
    ModelSpec,
    add_ratios,
    framework_available,
    measure,
    print_rows,
)
from common import machine_info, random_batch  # noqa: E402


V, T, B = 65, 100, 32

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


def emit_module(H: int, unroll: int | None = None) -> str:
    """The generated JAX module's source for the benchmark model."""
    from rnnc.backends.jax.emitter import emit
    from rnnc.compiler import build
    from rnnc.ir.lower import Sizes
    from rnnc.spec import parse_spec

    program = build(parse_spec(SPEC.format(V=V, H=H, lr=LR), "charlm_bench.rnn"), Sizes(V, V))
    return emit(program, unroll=unroll)


def load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_rnnc_jax(mod: Any, seed: int = 0):
    """(train_step, infer_step) closures over the generated module, like baselines'."""
    import jax

    tok, tgt = random_batch(V, T, B, seed)
    tokens, targets = jax.numpy.asarray(tok), jax.numpy.asarray(tgt)
    params = mod.init_params(seed)
    state = {"params": params, "opt": mod.init_opt_state(params)}

    def train_step() -> float:
        state["params"], state["opt"], _, metrics = mod.train_step(
            state["params"], state["opt"], tokens, targets
        )
        return float(metrics["loss"])

    def infer_step() -> None:
        mod.forward(state["params"], tokens)[0].block_until_ready()

    return train_step, infer_step


# ------------------------------------------------------------- compile latency

LATENCY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[3])
    from cache import enable_compilation_cache
    enable_compilation_cache(sys.argv[2])
    import jax
    import numpy as np
    import charlm_jax as m
    out = {"import_s": time.perf_counter() - t0}
    # JAX's own timings of each phase of building the executables (summed over entry points)
    EVENTS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace_s",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
        "/jax/core/compile/backend_compile_duration": "xla_s",
    }
    phases = dict.fromkeys(EVENTS.values(), 0.0)
    def on_event(event, seconds, **kwargs):
        if event in EVENTS:
            phases[EVENTS[event]] += seconds
    jax.monitoring.register_event_duration_secs_listener(on_event)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 65, (32, 100))
    t = time.perf_counter()
    p = m.init_params(0)
    o = m.init_opt_state(p)
    jax.block_until_ready((p, o))
    out["init_s"] = time.perf_counter() - t
    phases.update(dict.fromkeys(phases, 0.0))
    t = time.perf_counter()
    r = m.train_step(p, o, xs, xs)
    jax.block_until_ready(r)
    out["train_first_s"] = time.perf_counter() - t
    out.update(phases)  # the first train_step call's trace, lowering and XLA compile (or load)
    out["compile_s"] = sum(phases.values())
    t = time.perf_counter()
    jax.block_until_ready(m.train_step(p, o, xs, xs))
    out["train_next_s"] = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(m.forward(p, xs))
    out["forward_first_s"] = time.perf_counter() - t
    print(json.dumps(out))
""")


def compile_latency(module_dir: Path) -> list[dict[str, Any]]:
    """First-call times in two fresh processes sharing a new, empty cache dir."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="rnnc-jax-cache-") as cache:
        for label in ("cold (empty cache)", "warm (cache filled)"):
            env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    LATENCY_SCRIPT,
                    str(module_dir),
                    cache,
                    str(HERE.parent / "backends" / "jax"),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-2000:])
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["run"] = label
            row["cache_files"] = sum(1 for _ in Path(cache).rglob("*") if _.is_file())
            rows.append(row)
    return rows


def print_latency(rows: list[dict[str, Any]]) -> None:
    from common import print_table

    print_table(
        rows,
        [
            "run",
            "import_s",
            "init_s",
            "trace_s",
            "lower_s",
            "xla_s",
            "compile_s",
            "train_first_s",
            "train_next_s",
            "forward_first_s",
            "cache_files",
        ],
        headers={
            "import_s": "import s",
            "init_s": "init s",
            "trace_s": "trace s",
            "lower_s": "lower s",
            "xla_s": "XLA s",
            "compile_s": "compile s",
            "train_first_s": "train 1st s",
            "train_next_s": "train 2nd s",
            "forward_first_s": "forward 1st s",
            "cache_files": "cache files",
        },
    )


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--H", type=int, default=512, help="LSTM width (default 512)")
    ap.add_argument("--frameworks", default="rnnc-jax,torch,flax")
    ap.add_argument(
        "--unroll",
        default="",
        help="comma list of scan unroll factors to compare (default: the emitter's)",
    )
    ap.add_argument(
        "--module",
        metavar="PATH",
        type=Path,
        action="append",
        help="time this pre-generated module instead of generating one with rnnc "
        "(repeatable; the first is used for the compile latency)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        help="torch threads (default: the CPUs this process may run on)",
    )
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--no-compile-latency", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)

    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unrolls = [int(u) for u in args.unroll.split(",") if u.strip()] or [None]
    info = machine_info()
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"# V={V} T={T} B={B} H={args.H} float32 Adam(lr={LR}) full BPTT; "
        f"repeat={args.repeat} warmup={args.warmup} stat={args.stat}",
        flush=True,
    )
    if "torch" in frameworks and framework_available("torch"):
        import baselines
        import torch

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        baselines._TORCH_THREADS_SET = True
    spec = ModelSpec("lstm", args.H)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="rnnc-bench-"))
    if args.module:
        modules = [(f"rnnc-jax {p.stem}", p) for p in args.module]
    else:
        modules = []
        for u in unrolls:
            path = tmp / f"charlm_u{u}.py"
            path.write_text(emit_module(args.H, u))
            modules.append(("rnnc-jax" if u is None else f"rnnc-jax u{u}", path))
    for fw in frameworks:
        if fw == "rnnc-jax":
            for i, (name, path) in enumerate(modules):
                t0 = time.perf_counter()
                train_step, infer_step = make_rnnc_jax(load_module(path, f"charlm_{i}"))
                print(
                    f"# {name}: module loaded in {time.perf_counter() - t0:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(
                    measure(
                        name,
                        spec,
                        train_step,
                        infer_step,
                        V=V,
                        T=T,
                        B=B,
                        repeat=args.repeat,
                        warmup=args.warmup,
                        stat=args.stat,
                    )
                )
        elif framework_available(fw) and (fw, "lstm") in BASELINES:
            train_step, infer_step = BASELINES[(fw, "lstm")](V, args.H, 1, T, B, 0)
            rows.append(
                measure(
                    fw,
                    spec,
                    train_step,
                    infer_step,
                    V=V,
                    T=T,
                    B=B,
                    repeat=args.repeat,
                    warmup=args.warmup,
                    stat=args.stat,
                )
            )
        else:
            print(f"# skipping {fw}: not available", file=sys.stderr)
    add_ratios(rows)
    for r in rows:
        r.pop("train_samples_s", None)
        r.pop("infer_samples_s", None)
    print()
    print_rows(rows)
    for r in rows:
        print(
            f"# {r['framework']}: first train_step call {r['train_first_s']:.2f} s, "
            f"first forward call {r['infer_first_s']:.2f} s"
        )
    latency = []
    if not args.no_compile_latency and "rnnc-jax" in frameworks:
        mdir = tmp / "latency"
        mdir.mkdir()
        source = modules[0][1].read_text() if args.module else emit_module(args.H)
        (mdir / "charlm_jax.py").write_text(source)
        print("\n# compile latency of the generated module: two fresh processes, one cache dir")
        latency = compile_latency(mdir)
        print_latency(latency)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "rows": rows, "latency": latency}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
