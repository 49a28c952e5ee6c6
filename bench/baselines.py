"""Reference baselines for the rnnc character-LM benchmark (PyTorch and Flax).

Workload: vocabulary ``V=65`` one-hot input, ``T=100`` steps, batch ``B=32``, float32,
full BPTT over the ``T`` steps, softmax cross-entropy on every step, ``Linear(H -> V)``
head, Adam with ``lr=2e-3``. Every step starts from a zero state.

Each builder is ``make_<framework>_<kind>(V, H, layers, T, B, seed)`` and returns
``(train_step, infer_step)``, two zero-argument callables that block until done:

* ``train_step()`` runs forward + backward + one Adam update on a fixed random batch
  and returns the loss as a Python float;
* ``infer_step()`` runs the forward pass (logits for all ``B*T`` tokens, no gradient)
  and returns nothing useful.

``BASELINES[(framework, kind)]`` maps to the builders, so another bench script can add
its own rows (e.g. rnnc-generated modules) and reuse :func:`measure` /
:func:`add_ratios` / :func:`print_rows` to put them in the same table.

Frameworks:

``torch``       ``nn.LSTM`` / ``nn.GRU`` (LSTM runs oneDNN's fused RNN on CPU, GRU ATen's)
``torch_loop``  hand-written cell, Python loop over time, input projection hoisted
``flax``        ``nn.RNN`` over ``nn.OptimizedLSTMCell`` / ``nn.GRUCell`` / custom cells,
                ``jax.jit`` train step with ``optax.adam`` (compiled during warm-up)

torch and jax/flax are imported lazily, so this module imports without them.

Usage: ``python bench/baselines.py [--models lstm128,lstm512,...] [--repeat N]``
"""

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


try:
    from common import (
        cell_flops,
        gemm_peak_gflops,
        machine_info,
        print_table,
        random_batch,
        time_fn,
        torch_gemm_peak_gflops,
    )
except ImportError:  # imported as ``bench.baselines`` from the repository root
    from bench.common import (
        cell_flops,
        gemm_peak_gflops,
        machine_info,
        print_table,
        random_batch,
        time_fn,
        torch_gemm_peak_gflops,
    )


V_DEFAULT = 65
T_DEFAULT = 100
B_DEFAULT = 32
LR = 2e-3

StepFn = Callable[[], Any]
Builder = Callable[[int, int, int, int, int, int], tuple[StepFn, StepFn]]


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: cell kind, hidden width, number of stacked layers."""

    kind: str
    H: int
    layers: int = 1

    @property
    def name(self) -> str:
        return f"{self.kind}{self.H}" if self.layers == 1 else f"{self.kind}{self.layers}x{self.H}"


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("lstm", 128),
        ModelSpec("lstm", 512),
        ModelSpec("lstm", 256, 2),
        ModelSpec("gru", 512),
        ModelSpec("peephole", 512),
        ModelSpec("mgu", 512),
    )
}

#: Cell kind whose ``torch`` (nn.LSTM / nn.GRU) row is the ratio denominator. Custom
#: cells are compared with the closest fused PyTorch layer of the same H and depth.
REFERENCE_KIND = {"lstm": "lstm", "peephole": "lstm", "gru": "gru", "mgu": "gru"}

FRAMEWORKS: dict[str, str] = {
    "torch": "PyTorch nn",
    "torch_loop": "PyTorch cell loop",
    "flax": "Flax nn.RNN",
}


def reference_spec(spec: ModelSpec) -> ModelSpec:
    """The model whose ``("torch", ...)`` row each row of ``spec`` is divided by."""
    return ModelSpec(REFERENCE_KIND[spec.kind], spec.H, spec.layers)


# =============================================================================== torch


_TORCH_THREADS_SET = False


def _torch_setup(seed: int) -> Any:
    import torch

    global _TORCH_THREADS_SET
    if not _TORCH_THREADS_SET:  # once; main() may have chosen another count already
        torch.set_num_threads(os.cpu_count() or 1)
        _TORCH_THREADS_SET = True
    return torch.Generator().manual_seed(seed)


def _torch_steps(
    forward: Callable[[Any], Any], params: Sequence[Any], V: int, T: int, B: int, seed: int
) -> tuple[StepFn, StepFn]:
    """Wrap ``forward(tokens) -> logits (B, T, V)`` into (train_step, infer_step)."""
    import torch
    import torch.nn.functional as F

    tok_np, tgt_np = random_batch(V, T, B, seed)
    tokens = torch.from_numpy(tok_np)
    targets = torch.from_numpy(tgt_np).reshape(-1)
    opt = torch.optim.Adam(params, lr=LR)

    def train_step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = forward(tokens)
        loss = F.cross_entropy(logits.reshape(-1, V), targets)
        loss.backward()
        opt.step()
        return loss.item()

    def infer_step() -> None:
        with torch.inference_mode():
            forward(tokens)

    return train_step, infer_step


def _make_torch_nn(kind: str, V: int, H: int, layers: int, T: int, B: int, seed: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    _torch_setup(seed)
    torch.manual_seed(seed)  # nn modules initialise from the global generator
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](V, H, num_layers=layers, batch_first=True)
    head = nn.Linear(H, V)

    def forward(tokens):
        y, _ = rnn(F.one_hot(tokens, V).float())
        return head(y)

    params = list(rnn.parameters()) + list(head.parameters())
    return _torch_steps(forward, params, V, T, B, seed)


def make_torch_lstm(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """PyTorch ``nn.LSTM`` (oneDNN fused RNN on CPU) + ``nn.Linear`` head."""
    return _make_torch_nn("lstm", V, H, layers, T, B, seed)


def make_torch_gru(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """PyTorch ``nn.GRU`` + ``nn.Linear`` head."""
    return _make_torch_nn("gru", V, H, layers, T, B, seed)


# ---- hand-written cells (same math as nn.LSTM / nn.GRU, so weights can be copied) ----
#
# Per layer the parameters are: W (in, G*H), U (H, G*H) [MGU: U_f, U_h (H, H)],
# b (G*H,), plus GRU: b_h (3H,) (PyTorch's b_hh, which sits inside r * (U_n h + b_hn)),
# peephole: p (3, H) diagonal peepholes for i, f, o. Gate order is PyTorch's:
# LSTM/peephole i, f, g, o; GRU r, z, n; MGU f, h~. The input projection x W + b of all
# T steps is one matmul before the loop, as fused RNN layers do.


def torch_loop_init(kind: str, V: int, H: int, layers: int, seed: int = 0) -> list[list[Any]]:
    """Parameters ``[[layer-0 tensors...], ..., [W_head (H, V), b_head (V,)]]``.

    Uniform(-1/sqrt(H), 1/sqrt(H)) like PyTorch's RNN layers; all require grad.
    """
    import torch

    g = _torch_setup(seed)
    bound = 1.0 / math.sqrt(H)

    def u(*shape: int) -> Any:
        t = torch.empty(*shape).uniform_(-bound, bound, generator=g)
        return t.requires_grad_()

    G = {"lstm": 4, "peephole": 4, "gru": 3, "mgu": 2}[kind]
    out: list[list[Any]] = []
    in_width = V
    for _ in range(layers):
        if kind == "mgu":
            layer = [u(in_width, 2 * H), u(H, H), u(H, H), u(2 * H)]
        else:
            layer = [u(in_width, G * H), u(H, G * H), u(G * H)]
            if kind == "gru":
                layer.append(u(G * H))
            elif kind == "peephole":
                layer.append(u(3, H))
        out.append(layer)
        in_width = H
    out.append([u(H, V), u(V)])
    return out


def torch_loop_forward(kind: str, params: list[list[Any]], tokens: Any, V: int) -> Any:
    """Logits ``(B, T, V)`` of the hand-written model for int64 ``tokens`` ``(B, T)``."""
    import torch
    import torch.nn.functional as F

    x = F.one_hot(tokens, V).float()
    B, T = tokens.shape
    for layer in params[:-1]:
        W, b = layer[0], (layer[3] if kind == "mgu" else layer[2])
        xw = torch.matmul(x, W) + b  # (B, T, G*H), hoisted out of the time loop
        H = W.shape[1] // (2 if kind == "mgu" else 4 if kind in ("lstm", "peephole") else 3)
        h = x.new_zeros(B, H)
        outs = []
        if kind == "lstm":
            U = layer[1]
            c = x.new_zeros(B, H)
            for t in range(T):
                i, f, g, o = torch.addmm(xw[:, t], h, U).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
        elif kind == "peephole":
            U, p = layer[1], layer[3]
            c = x.new_zeros(B, H)
            for t in range(T):
                i, f, g, o = torch.addmm(xw[:, t], h, U).chunk(4, 1)
                i = torch.sigmoid(i + p[0] * c)
                f = torch.sigmoid(f + p[1] * c)
                c = f * c + i * torch.tanh(g)
                h = torch.sigmoid(o + p[2] * c) * torch.tanh(c)
                outs.append(h)
        elif kind == "gru":
            U, b_h = layer[1], layer[3]
            for t in range(T):
                xr, xz, xn = xw[:, t].chunk(3, 1)
                hr, hz, hn = torch.addmm(b_h, h, U).chunk(3, 1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = n + z * (h - n)  # (1 - z) * n + z * h
                outs.append(h)
        elif kind == "mgu":
            U_f, U_h = layer[1], layer[2]
            xf, xh = xw.chunk(2, 2)
            for t in range(T):
                f = torch.sigmoid(torch.addmm(xf[:, t], h, U_f))
                h_new = torch.tanh(torch.addmm(xh[:, t], f * h, U_h))
                h = h + f * (h_new - h)  # (1 - f) * h + f * h~
                outs.append(h)
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
        x = torch.stack(outs, 1)
    W_o, b_o = params[-1]
    return torch.matmul(x, W_o) + b_o


def _make_torch_loop(kind: str, V: int, H: int, layers: int, T: int, B: int, seed: int):
    params = torch_loop_init(kind, V, H, layers, seed)
    flat = [p for layer in params for p in layer]
    return _torch_steps(lambda tok: torch_loop_forward(kind, params, tok, V), flat, V, T, B, seed)


def make_torch_loop_lstm(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Hand-written LSTM cell, Python loop over time."""
    return _make_torch_loop("lstm", V, H, layers, T, B, seed)


def make_torch_loop_peephole(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Hand-written peephole LSTM (diagonal peepholes on i, f from c and on o from c')."""
    return _make_torch_loop("peephole", V, H, layers, T, B, seed)


def make_torch_loop_gru(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Hand-written GRU cell (PyTorch's formulation: n = tanh(W_n x + r*(U_n h + b_hn)))."""
    return _make_torch_loop("gru", V, H, layers, T, B, seed)


def make_torch_loop_mgu(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Hand-written minimal gated unit (Zhou et al. 2016)."""
    return _make_torch_loop("mgu", V, H, layers, T, B, seed)


# ================================================================================ flax


@functools.cache
def flax_cells() -> dict[str, Any]:
    """Flax cell classes per kind (built lazily so the module imports without flax)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    class MGUCell(nn.RNNCellBase):
        """Minimal gated unit: f = σ(W_f x + U_f h + b_f);
        h~ = tanh(W_h x + U_h (f*h) + b_h); h' = (1 - f) * h + f * h~."""

        features: int

        @nn.compact
        def __call__(self, carry, inputs):
            h = carry
            dense_x = functools.partial(nn.Dense, features=self.features, use_bias=True)
            dense_h = functools.partial(
                nn.Dense, features=self.features, use_bias=False,
                kernel_init=nn.initializers.orthogonal(),
            )
            f = jax.nn.sigmoid(dense_x(name="if")(inputs) + dense_h(name="hf")(h))
            h_new = jnp.tanh(dense_x(name="ih")(inputs) + dense_h(name="hh")(f * h))
            h = h + f * (h_new - h)
            return h, h

        def initialize_carry(self, rng, input_shape):
            return jnp.zeros((*input_shape[:-1], self.features), jnp.float32)

        @property
        def num_feature_axes(self) -> int:
            return 1

    class PeepholeLSTMCell(nn.RNNCellBase):
        """LSTM with diagonal peepholes: i, f see c; o sees the new c'."""

        features: int

        @nn.compact
        def __call__(self, carry, inputs):
            c, h = carry
            H = self.features
            gates = nn.Dense(4 * H, name="i")(inputs) + nn.Dense(
                4 * H, use_bias=False, name="h", kernel_init=nn.initializers.orthogonal()
            )(h)
            p = self.param("peep", nn.initializers.zeros_init(), (3, H), jnp.float32)
            gi, gf, gg, go = jnp.split(gates, 4, axis=-1)
            i = jax.nn.sigmoid(gi + p[0] * c)
            f = jax.nn.sigmoid(gf + p[1] * c)
            c = f * c + i * jnp.tanh(gg)
            h = jax.nn.sigmoid(go + p[2] * c) * jnp.tanh(c)
            return (c, h), h

        def initialize_carry(self, rng, input_shape):
            z = jnp.zeros((*input_shape[:-1], self.features), jnp.float32)
            return z, z

        @property
        def num_feature_axes(self) -> int:
            return 1

    return {
        "lstm": nn.OptimizedLSTMCell,
        "gru": nn.GRUCell,
        "mgu": MGUCell,
        "peephole": PeepholeLSTMCell,
    }


def _make_flax(kind: str, V: int, H: int, layers: int, T: int, B: int, seed: int):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    cell_cls = flax_cells()[kind]

    class CharLM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = jax.nn.one_hot(tokens, V, dtype=jnp.float32)
            for _ in range(layers):
                x = nn.RNN(cell_cls(features=H))(x)
            return nn.Dense(V)(x)

    model = CharLM()
    tok_np, tgt_np = random_batch(V, T, B, seed)
    tokens = jnp.asarray(tok_np, dtype=jnp.int32)
    targets = jnp.asarray(tgt_np, dtype=jnp.int32)
    params = model.init(jax.random.PRNGKey(seed), tokens)["params"]
    tx = optax.adam(LR)
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def update(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    state = {"params": params, "opt": opt_state}

    def train_step() -> float:
        state["params"], state["opt"], loss = update(state["params"], state["opt"], tokens, targets)
        return float(loss)  # blocks until the step is done

    def infer_step() -> None:
        forward(state["params"], tokens).block_until_ready()

    return train_step, infer_step


def make_flax_lstm(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Flax ``nn.RNN(nn.OptimizedLSTMCell)`` layers + ``nn.Dense`` head, jitted."""
    return _make_flax("lstm", V, H, layers, T, B, seed)


def make_flax_gru(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Flax ``nn.RNN(nn.GRUCell)`` layers + ``nn.Dense`` head, jitted."""
    return _make_flax("gru", V, H, layers, T, B, seed)


def make_flax_peephole(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Flax ``nn.RNN`` over a custom peephole-LSTM cell, jitted."""
    return _make_flax("peephole", V, H, layers, T, B, seed)


def make_flax_mgu(V: int, H: int, layers: int, T: int, B: int, seed: int = 0):
    """Flax ``nn.RNN`` over a custom MGU cell, jitted."""
    return _make_flax("mgu", V, H, layers, T, B, seed)


BASELINES: dict[tuple[str, str], Builder] = {
    ("torch", "lstm"): make_torch_lstm,
    ("torch", "gru"): make_torch_gru,
    ("torch_loop", "lstm"): make_torch_loop_lstm,
    ("torch_loop", "peephole"): make_torch_loop_peephole,
    ("torch_loop", "gru"): make_torch_loop_gru,
    ("torch_loop", "mgu"): make_torch_loop_mgu,
    ("flax", "lstm"): make_flax_lstm,
    ("flax", "gru"): make_flax_gru,
    ("flax", "peephole"): make_flax_peephole,
    ("flax", "mgu"): make_flax_mgu,
}

_REQUIRES = {"torch": ("torch",), "torch_loop": ("torch",), "flax": ("jax", "flax", "optax")}


def framework_available(framework: str) -> bool:
    """Whether the packages a framework's builders import are installed."""
    return all(importlib.util.find_spec(m) is not None for m in _REQUIRES.get(framework, ()))


# ========================================================================= measuring


def measure(
    framework: str,
    spec: ModelSpec,
    train_step: StepFn,
    infer_step: StepFn,
    *,
    V: int = V_DEFAULT,
    T: int = T_DEFAULT,
    B: int = B_DEFAULT,
    repeat: int = 7,
    warmup: int = 2,
    peak_gflops: float | None = None,
    stat: str = "median",
) -> dict[str, Any]:
    """Time one (train_step, infer_step) pair and return a table row.

    The first call of each step is timed on its own (``*_first_s``: includes JIT
    compilation for Flax), then ``time_fn(warmup=warmup - 1, repeat=repeat)``.
    Throughput is tokens/s with ``B*T`` tokens per step, from the median step time
    (``stat="min"``: the fastest step, steadier on a busy machine); GFLOP/s uses
    :func:`common.cell_flops`; ``*_peak`` is that as a fraction of ``peak_gflops``.
    Works for any framework's steps, e.g. rnnc-generated ones.
    """
    tokens = B * T
    row: dict[str, Any] = {
        "framework": framework, "model": spec.name,
        "kind": spec.kind, "H": spec.H, "layers": spec.layers,
    }
    for phase, fn, training in (("train", train_step, True), ("infer", infer_step, False)):
        t0 = time.perf_counter()
        out = fn()
        row[f"{phase}_first_s"] = time.perf_counter() - t0
        if training:
            row["loss"] = out
        st = time_fn(fn, warmup=max(0, warmup - 1), repeat=repeat)
        med = st["median_s"]
        t_step = st["min_s"] if stat == "min" else med
        gflops = cell_flops(spec.kind, V, spec.H, T, B, spec.layers, training) / t_step / 1e9
        row.update({
            f"{phase}_ms": med * 1e3,
            f"{phase}_step_ms": t_step * 1e3,
            f"{phase}_min_ms": st["min_s"] * 1e3,
            f"{phase}_max_ms": st["max_s"] * 1e3,
            f"{phase}_iqr_pct": 100.0 * st["iqr_s"] / med,
            f"{phase}_tok_s": tokens / t_step,
            f"{phase}_gflops": gflops,
            f"{phase}_peak": gflops / peak_gflops if peak_gflops else None,
            f"{phase}_samples_s": st["samples"],
        })
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill ``vs``, ``train_x`` and ``infer_x`` in place: tokens/s divided by that of the
    ``torch`` row of the reference model (:func:`reference_spec`), ``None`` without one.

    Rows are matched by their ``kind``/``H``/``layers`` keys (set by :func:`measure`)."""
    by_key = {
        (r["framework"], ModelSpec(r["kind"], r["H"], r["layers"])): r
        for r in rows if "train_tok_s" in r and "kind" in r
    }
    for r in rows:
        ref = None
        if r.get("kind") in REFERENCE_KIND:
            ref_spec = reference_spec(ModelSpec(r["kind"], r["H"], r["layers"]))
            ref = by_key.get(("torch", ref_spec))
        r["vs"] = f"torch {ref_spec.name}" if ref is not None else None
        for phase in ("train", "infer"):
            ok = ref is not None and f"{phase}_tok_s" in r
            r[f"{phase}_x"] = r[f"{phase}_tok_s"] / ref[f"{phase}_tok_s"] if ok else None


TABLE_COLUMNS = [
    "model", "framework",
    "train_tok_s", "train_step_ms", "train_iqr_pct", "train_gflops", "train_peak", "train_x",
    "infer_tok_s", "infer_step_ms", "infer_iqr_pct", "infer_gflops", "infer_peak", "infer_x",
    "vs",
]
TABLE_HEADERS = {
    "train_tok_s": "train tok/s", "train_step_ms": "ms", "train_iqr_pct": "iqr%",
    "train_gflops": "GFLOP/s", "train_peak": "peak", "train_x": "x nn",
    "infer_tok_s": "infer tok/s", "infer_step_ms": "ms", "infer_iqr_pct": "iqr%",
    "infer_gflops": "GFLOP/s", "infer_peak": "peak", "infer_x": "x nn",
}


def print_rows(rows: list[dict[str, Any]], file: Any = None) -> str:
    """Print the standard benchmark table (see ``TABLE_COLUMNS``)."""
    return print_table(rows, TABLE_COLUMNS, file=file, headers=TABLE_HEADERS)


# ============================================================================== CLI


def _parse_list(text: str, known: Sequence[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in known]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return items


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma list")
    ap.add_argument("--repeat", type=int, default=7, help="timed calls per step (default 7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls, >= 1 (default 2)")
    ap.add_argument("--T", type=int, default=T_DEFAULT, help="sequence length")
    ap.add_argument("--B", type=int, default=B_DEFAULT, help="batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stat", choices=("median", "min"), default="median",
        help="step time that tok/s and GFLOP/s are computed from (default median)",
    )
    ap.add_argument(
        "--torch-threads", type=int, default=os.cpu_count() or 1,
        help="torch.set_num_threads (default os.cpu_count())",
    )
    ap.add_argument(
        "--no-ref", action="store_true",
        help="don't add the torch reference rows that selected models are compared with",
    )
    ap.add_argument("--json", metavar="PATH", help="also write rows and machine info as JSON")
    args = ap.parse_args(argv)

    models = _parse_list(args.models, list(MODELS), "model")
    frameworks = _parse_list(args.frameworks, list(FRAMEWORKS), "framework")
    V, T, B = V_DEFAULT, args.T, args.B

    missing = [f for f in frameworks if not framework_available(f)]
    for f in missing:
        print(f"# skipping {f}: not installed", file=sys.stderr)
    frameworks = [f for f in frameworks if f not in missing]

    # (framework, model) jobs in order; reference rows go first within their model group.
    jobs: list[tuple[str, ModelSpec]] = []
    for name in models:
        spec = MODELS[name]
        ref = reference_spec(spec)
        if not args.no_ref and framework_available("torch"):
            if ("torch", ref) not in jobs:
                jobs.append(("torch", ref))
        for fw in frameworks:
            if (fw, spec.kind) in BASELINES and (fw, spec) not in jobs:
                jobs.append((fw, spec))

    if framework_available("torch"):
        import torch

        global _TORCH_THREADS_SET
        torch.set_num_threads(args.torch_threads)
        _TORCH_THREADS_SET = True
    info = machine_info()
    peak_np = gemm_peak_gflops()
    peak_torch = torch_gemm_peak_gflops() if framework_available("torch") else None
    peak = max(p for p in (peak_np, peak_torch) if p)
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"# V={V} T={T} B={B} tokens/step={B * T} lr={LR} repeat={args.repeat}"
        f" warmup={args.warmup} stat={args.stat}"
    )
    torch_peak_txt = f"{peak_torch:.1f}" if peak_torch else "-"
    print(
        f"# float32 GEMM 1024^3 peak: numpy {peak_np:.1f} GFLOP/s, torch {torch_peak_txt}"
        f" GFLOP/s; 'peak' columns are fractions of {peak:.1f}",
        flush=True,
    )

    rows: list[dict[str, Any]] = []
    for fw, spec in jobs:
        label = f"{fw}/{spec.name}"
        print(f"# running {label} ...", file=sys.stderr, flush=True)
        train_step = infer_step = None
        try:
            train_step, infer_step = BASELINES[(fw, spec.kind)](V, spec.H, spec.layers, T, B,
                                                                args.seed)
            row = measure(fw, spec, train_step, infer_step, V=V, T=T, B=B,
                          repeat=args.repeat, warmup=args.warmup, peak_gflops=peak,
                          stat=args.stat)
        except Exception as e:  # keep the other rows; report the failure in the table
            print(f"# {label} failed: {type(e).__name__}: {e}", file=sys.stderr)
            row = {"framework": fw, "model": spec.name, "kind": spec.kind, "H": spec.H,
                   "layers": spec.layers, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        del train_step, infer_step

    add_ratios(rows)
    print()
    print_rows(rows)
    print(
        f"\n# tok/s = B*T / {args.stat} step time; iqr% = interquartile range / median;"
        " GFLOP/s counts matmuls only (common.cell_flops);"
        " x nn = tok/s over the 'vs' row (PyTorch nn.LSTM / nn.GRU)."
    )
    first = [r for r in rows if r["framework"] == "flax" and "train_first_s" in r]
    if first:
        print("# flax first-call (compile) s: " + ", ".join(
            f"{r['model']} train {r['train_first_s']:.1f} infer {r['infer_first_s']:.1f}"
            for r in first
        ))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"machine": info, "peak_gflops": {"numpy": peak_np, "torch": peak_torch},
                 "V": V, "T": T, "B": B, "lr": LR, "rows": rows},
                f, indent=1, default=str,
            )
    return rows


if __name__ == "__main__":
    main()
