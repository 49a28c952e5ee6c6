"""One test matrix for every registered backend, over a set of spec cases, in float64.

For each backend and case:

- ``test_agrees_with_numpy``: ``init_params``, ``forward`` (outputs and final state),
  ``loss_and_grad`` (loss, every gradient including inputs and initial state, final
  state) and, for the updater cases, two ``train_step`` calls (parameters, optimizer
  state, metrics) equal the NumPy backend's to 1e-9 relative. The NumPy backend is the
  reference; while it is not there these tests skip.
- ``test_gradients_match_finite_differences``: the backend's gradients against central
  differences of its own loss (cases without truncated BPTT, whose gradient is not the
  loss gradient by design), along random directions, one per parameter tensor.

The cases cover every library cell with option combinations (several cells share one
model to keep the number of compilations down), stacks, both directions, merges,
residual layers, the three input encodings, softmax and linear heads per step and at the
last step, lengths, resets, truncated BPTT with k1 = k2 and k1 < k2, and every updater
with schedules, clipping and L1/L2.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from generated_modules import import_source


try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover
    jax = None

from rnnc.backends import backend_names, get_backend  # noqa: E402
from rnnc.compiler import build  # noqa: E402
from rnnc.ir.lower import Sizes  # noqa: E402
from rnnc.spec import parse_spec  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-9
B, T = 3, 5


@dataclass(frozen=True)
class Case:
    text: str
    n_in: int
    n_out: int
    lengths: bool = False
    resets: bool = False
    train: bool = False  # compare train_step (the updater cases)
    grads: bool = True  # compare forward / loss_and_grad
    steps: int = T  # sequence length of the case's data

    @property
    def truncated(self) -> bool:
        return "bptt" in self.text


def model(
    layers,
    inp="onehot(vocab: 5)",
    head="softmax(at: per_step, classes: 4)",
    train="",
    cells="",
    extra="",
):
    body = "\n".join(f"  layer {layer}" for layer in layers)
    out = f"{cells}model case {{\n  input {inp}\n{body}\n  head {head}\n{extra}}}\n"
    if train:
        out += "train {\n  data reber\n" + "".join(f"  {line}\n" for line in train) + "}\n"
    return out


MIX_CELL = """cell mix(x) {
  state h, s[2]
  param W_g init orthogonal
  param V init xavier_normal
  param P init normal(0.3)
  param b_g init ones
  g = sigmoid(W_g @ [x, h] + b_g)
  q = softplus(V @ x) / (1 + exp(-h))
  h' = tanh(g * h + (1 - g) * q)
  s' = -s / 2 + identity(P @ h') + h[1:3]
}
"""

# a cell that reads no input: its whole-sequence VJP loop has nothing to scan over but
# the masks (the JAX backend's lax.scan needed an explicit length)
DRIFT_CELL = """cell drift(x) {
  state h
  h' = tanh(U @ h + b)
}
"""

# next states that no step instruction computes: the input itself, and a value hoisted
# out of the loop whole (the step returned an undefined name `x`: NameError in both
# backends' generated modules)
PASS_CELL = """cell pass(x) {
  state h, c
  h' = tanh(W @ x)
  c' = x
  output c
}
"""

# long names: generated lines that do not fit are split, never refused (the JAX backend
# raised "line too long" for a fused product such as layer1_hidden_state_next_proj)
LONG_CELL = """cell longnames(x) {
  state hidden_state, memory_s[2]
  hidden_state' = tanh(W @ x + U @ hidden_state + V @ memory_s)
  memory_s' = softsign(hidden_state[1:3] * memory_s + W2 @ hidden_state')
}
"""

# five states in a gated-feedback stack: the step's returned pair fits on one line
# only inside the parentheses (ruff puts each element on its own line); an equation whose
# text fits on a line only without its key in the module's SPEC (parenthesised)
TRIO_CELL = """cell trio(x) {
  state h, s[2], c
  h' = tanh(W @ x + U @ h + V @ s)
  s' = softsign(h[1:3] * s)
  c' = softplus((U1 @ c + h) * (c + U2 @ h)) + sigmoid(W1 @ x) * tanh(U3 @ c - h) / 2
}
"""

# the layer-normalised LSTM of specs/layernorm_lstm.rnn (feature means, a width inferred
# after its mean, sqrt), and a cell of the other new functions and reductions: a sum of a
# width-1 state, a mean carried as a state, expands in the step and the hoisted section, a
# mean of a parameter (computed once per call)
LN_CELL = (ROOT / "specs" / "layernorm_lstm.rnn").read_text(encoding="utf-8").split(
    "\nmodel ")[0] + "\n"

FUNCS_CELL = """cell funcs(x) {
  state h, s[1]
  a = W @ x + U @ h
  p = softplus(a) + 0.5
  h' = elu(a) * 0.5 + log_sigmoid(V @ h) + log(p) - sqrt(p) + rsqrt(p) * 0.1 + sum(s) + mean(v) * v
  s' = mean(h') + sum(x) * 0.1 - s * 0.5
}
"""

DENSE = "dense(features: 3)"
LAST = "softmax(at: last, classes: 4)"

CASES = {
    # cells and their options (several per model)
    "elman_softsign+gru_before": Case(
        model(["elman(hidden: 3, act: softsign)", 'gru(hidden: 3, reset: "before")']),
        5,
        4,
        lengths=True,
    ),
    "gru+indrnn": Case(
        model(["gru(hidden: 3)", "indrnn(hidden: 3, u_init: 0.5)"]), 5, 4, resets=True
    ),
    "jordan_units+linear_per_step": Case(
        model(
            ["jordan(hidden: 3, units: 4, out_act: sigmoid)"],
            DENSE,
            "linear(at: per_step, size: 2)",
        ),
        3,
        2,
    ),
    "lstm_peepholes+mgu": Case(
        model(["lstm(hidden: 3, peepholes: true, forget_bias: 0.5)", "mgu(hidden: 3)"]), 5, 4
    ),
    "lstm_variants": Case(
        model(
            [
                "lstm(hidden: 3, coupled: true, cell_clip: 0.8, proj: 2)",
                "lstm(hidden: 3, forget_gate: false, output_gate: false, gate_act: hard_sigmoid, "
                "out_act: softsign)",
                "lstm(hidden: 3, input_gate: false, cell_act: softsign)",
            ]
        ),
        5,
        4,
        lengths=True,
    ),
    "custom_cell+linear_last": Case(
        model(["mix(hidden: 3)"], DENSE, "linear(at: last, size: 2)", cells=MIX_CELL),
        3,
        2,
        lengths=True,
    ),
    "cell_reading_no_input": Case(
        model(["drift(hidden: 2)", "elman(hidden: 2)"], DENSE, cells=DRIFT_CELL), 3, 4
    ),
    "state_is_the_input": Case(
        model(["pass(hidden: 3)", "elman(hidden: 2)"], DENSE, cells=PASS_CELL), 3, 4,
        lengths=True, resets=True,
    ),
    "long_names_gated_feedback": Case(
        model(
            ["longnames(hidden: 3)", "mgu(hidden: 3)"],
            cells=LONG_CELL,
            extra="  stack gated_feedback\n",
        ),
        5,
        4,
        lengths=True,
    ),
    "gated_feedback_three_state_cells": Case(
        model(
            ["trio(hidden: 3)", "mix(hidden: 3)"],
            cells=TRIO_CELL + MIX_CELL,
            extra="  stack gated_feedback\n",
        ),
        5,
        4,
    ),
    "long_layer_names": Case(
        model(
            [
                "longnames(hidden: 3, name: first_recurrent_layer)",
                "lstm(hidden: 3, peepholes: true, name: second_recurrent_layer)",
            ],
            cells=LONG_CELL,
        ),
        5,
        4,
    ),
    # (eps 0.01: at 1e-5 the normalisation of a 3-wide cell is curved enough that central
    # differences with a step of 1e-5 are off by ~1e-6 relative, converging as eps^2)
    "layernorm_lstm_bidirectional+funcs": Case(
        model(
            ["ln_lstm(hidden: 3, direction: bidirectional, eps: 0.01)", "funcs(hidden: 3)"],
            DENSE,
            cells=LN_CELL + FUNCS_CELL,
        ),
        3,
        4,
        lengths=True,
        resets=True,
    ),
    "funcs+layernorm_lstm_gated_feedback": Case(
        model(
            ["funcs(hidden: 3)", "ln_lstm(hidden: 2)"],
            cells=LN_CELL + FUNCS_CELL,
            extra="  stack gated_feedback\n",
        ),
        5,
        4,
        lengths=True,
    ),
    # structure
    # six states in one combined cell: the JAX step's signature and docstring summary
    # are longer than a line (they were not split: the module was not ruff-clean)
    "gated_feedback_six_states": Case(
        model(
            ["lstm(hidden: 2)", "lstm(hidden: 2)", "lstm(hidden: 2)"],
            extra="  stack gated_feedback\n",
        ),
        5,
        4,
        resets=True,
    ),
    "stack+lengths+resets": Case(
        model(["lstm(hidden: 3)", "gru(hidden: 3)"]), 5, 4, lengths=True, resets=True
    ),
    "bidirectional_concat+embedding": Case(
        model(
            ["gru(hidden: 3, direction: bidirectional)", "lstm(hidden: 3)"],
            "embedding(vocab: 6, dim: 3)",
        ),
        6,
        4,
        lengths=True,
    ),
    "bidirectional_sum+residual+last": Case(
        model(
            ["elman(hidden: 3, direction: bidirectional, merge: sum, residual: true)"], DENSE, LAST
        ),
        3,
        4,
        lengths=True,
    ),
    "backward+last": Case(
        model(["lstm(hidden: 3, direction: backward)"], head=LAST), 5, 4, lengths=True, resets=True
    ),
    "residual_stack": Case(
        model(["elman(hidden: 5)", "mgu(hidden: 5)"], extra="  stack residual\n"), 5, 4
    ),
    # truncated BPTT
    "bptt_k1=k2": Case(
        model(["lstm(hidden: 3)", "elman(hidden: 3)"], train=["bptt k1 2 k2 2"]), 5, 4, lengths=True
    ),
    "bptt_k1<k2": Case(
        model(["gru(hidden: 3)"], train=["bptt k1 2 k2 3"]), 5, 4, lengths=True, resets=True
    ),
    "bptt_k1<k2+last": Case(
        model(["lstm(hidden: 3)"], head=LAST, train=["bptt k1 2 k2 4"]), 5, 4, lengths=True
    ),
    # truncated BPTT with directions that run backward in time (they enter each window at
    # its last step): windows side by side (k1 = 2 does not tile T = 5, and k1 < k2), and
    # one scan cut every k1 steps (k1 = k2 tiling T: 3 steps of 6, and 1 of 5)
    "bptt_k1=k2+bidirectional": Case(
        model(["gru(hidden: 3, direction: bidirectional)", "lstm(hidden: 3)"], train=["bptt k1 2"]),
        5,
        4,
        lengths=True,
        resets=True,
    ),
    "bptt_k1<k2+backward+last": Case(
        model(["lstm(hidden: 3, direction: backward)"], head=LAST, train=["bptt k1 2 k2 3"]),
        5,
        4,
        lengths=True,
    ),
    "bptt_cut_every_3+bidirectional": Case(
        model(["lstm(hidden: 3, direction: bidirectional, merge: sum)"], train=["bptt k1 3"]),
        5,
        4,
        lengths=True,
        resets=True,
        steps=6,
    ),
    "bptt_cut_every_step+backward": Case(
        model(
            ["elman(hidden: 3, direction: backward)", "mgu(hidden: 3, direction: bidirectional)"],
            train=["bptt k1 1"],
        ),
        5,
        4,
        lengths=True,
    ),
}

UPDATERS = {
    "sgd": ["updater sgd(lr: 0.1)", "l1 0.01", "schedule step(factor: 0.5, every: 1)"],
    "momentum": ["updater momentum(lr: 0.05, momentum: 0.8)", "clip value 0.05"],
    "nesterov": [
        "updater nesterov(lr: 0.05)",
        "l2 0.01",
        "schedule exponential(decay: 0.5, every: 1)",
    ],
    "adagrad": ["updater adagrad(lr: 0.1, initial_accumulator: 0.1)"],
    "rmsprop": [
        "updater rmsprop(lr: 0.01, decay: 0.95)",
        "clip norm 0.1",
        "schedule warmup_linear(warmup: 3)",
    ],
    "adam": [
        "updater adam(lr: 0.01, b1: 0.8)",
        "clip norm 0.5 value 0.1",
        "l1 0.001",
        "l2 0.01",
        "schedule cosine(total: 4, warmup: 1, min_lr: 0.0001)",
    ],
    "nadam": ["updater nadam(lr: 0.01)", "bptt k1 2 k2 3"],
}
for _name, _lines in UPDATERS.items():
    CASES[f"updater_{_name}"] = Case(
        model(["elman(hidden: 3)"], train=_lines), 5, 4, lengths=True, train=True, grads=False
    )


# ----------------------------------------------------------------- plumbing

_MODULES: dict[tuple[str, str], object] = {}


def backend_available(name):
    if name == "numpy":
        return (ROOT / "backends" / "numpy" / "__init__.py").exists()
    if name == "jax":
        return jax is not None
    try:
        get_backend(name)
    except Exception:  # an entry-point backend that does not load
        return False
    return True


def module(backend, case_id, tmp_dir):
    key = (backend, case_id)
    if key not in _MODULES:
        case = CASES[case_id]
        program = build(parse_spec(case.text, f"{case_id}.rnn"), Sizes(case.n_in, case.n_out))
        _MODULES[key] = _load(get_backend(backend).emit(program), tmp_dir, backend)
    return _MODULES[key]


def _load(source: str, tmp_dir: Path, stem: str):
    """Write a generated module to tmp_dir and import it under a fresh name."""
    return import_source(source, tmp_dir, f"rnnc_matrix_{stem}")


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix_modules")


def inputs_and_targets(mod, rng, b, t):
    """Random inputs and targets of the shapes the module's input and head take."""
    inp, head = mod.MODEL["input"], mod.MODEL["head"]
    if inp["kind"] == "dense":
        xs = rng.normal(size=(b, t, inp["size"]))
    else:
        xs = rng.integers(0, inp["vocab"], (b, t))
    n = head["output_size"]
    shape = (b, t) if head["at"] == "per_step" else (b,)
    ys = rng.integers(0, n, shape) if head["kind"] == "softmax" else rng.normal(size=shape + (n,))
    return xs, ys


def data(mod, case_id):
    """Inputs, targets, lengths and resets for a case (the same for every backend)."""
    case = CASES[case_id]
    rng = np.random.default_rng(list(CASES).index(case_id))
    t = case.steps
    xs, ys = inputs_and_targets(mod, rng, B, t)
    lengths = np.array([t, 2, t - 1])[:B] if case.lengths else None
    resets = (rng.random((B, t)) < 0.3) if case.resets else None
    return xs, ys, lengths, resets


def as_np(tree):
    if isinstance(tree, dict):
        return {k: as_np(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64)


def close(a, b, what, rtol=RTOL):
    a, b = as_np(a), as_np(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    scale = max(np.abs(b).max(initial=0.0), 1e-6)
    err = np.abs(a - b).max(initial=0.0) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} (max |ref| {scale:.3g})"


def close_dicts(a, b, what):
    assert sorted(a) == sorted(b), f"{what}: keys {sorted(a)} and {sorted(b)}"
    for k in b:
        close(a[k], b[k], f"{what}[{k}]")


def run_all(mod, case_id):
    """Everything a case compares, as NumPy float64 values."""
    case = CASES[case_id]
    params = mod.init_params(0, "float64")
    xs, ys, lengths, resets = data(mod, case_id)
    out = {"params": as_np(params)}
    if case.grads:
        state = {k: 0.3 * v for k, v in as_np(mod.initial_state(B, "float64")).items()}
        rng = np.random.default_rng(11)
        state = {k: v + rng.normal(scale=0.5, size=v.shape) for k, v in state.items()}
        y, final = mod.forward(params, xs, state, lengths, resets)
        out["forward"] = (as_np(y), as_np(final))
        loss, grads, final = mod.loss_and_grad(
            params, xs, ys, state, lengths, resets, wrt_inputs=True
        )
        out["loss_and_grad"] = (float(loss), as_np(grads), as_np(final))
        # without input gradients: the JAX backend then feeds one-hot inputs as token ids
        loss, grads, final = mod.loss_and_grad(params, xs, ys, state, lengths, resets)
        out["loss_and_grad_params"] = (float(loss), as_np(grads), as_np(final))
    if case.train:
        opt = mod.init_opt_state(params)
        steps = []
        for _ in range(2):
            params, opt, final, metrics = mod.train_step(params, opt, xs, ys, None, lengths, resets)
            steps.append((as_np(params), as_np(opt), as_np(final), as_np(metrics)))
        out["train_step"] = steps
    return out


BACKENDS = backend_names()
OTHERS = [b for b in BACKENDS if b != "numpy"]  # compared with the NumPy reference


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("backend", OTHERS)
def test_agrees_with_numpy(backend, case_id, tmp_dir):
    if not backend_available("numpy"):
        pytest.skip("the NumPy backend (backends/numpy/__init__.py) is not there yet")
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    case = CASES[case_id]
    got = run_all(module(backend, case_id, tmp_dir), case_id)
    ref = run_all(module("numpy", case_id, tmp_dir), case_id)
    close_dicts(got["params"], ref["params"], "init_params")
    if case.grads:
        close(got["forward"][0], ref["forward"][0], "forward outputs")
        close_dicts(got["forward"][1], ref["forward"][1], "forward final state")
        close(got["loss_and_grad"][0], ref["loss_and_grad"][0], "loss")
        close_dicts(got["loss_and_grad"][1], ref["loss_and_grad"][1], "grads")
        close_dicts(got["loss_and_grad"][2], ref["loss_and_grad"][2], "loss_and_grad state")
        got_p, ref_p = got["loss_and_grad_params"], ref["loss_and_grad_params"]
        close(got_p[0], ref_p[0], "loss (no input gradients)")
        close_dicts(got_p[1], ref_p[1], "grads (no input gradients)")
        close_dicts(got_p[2], ref_p[2], "final state (no input gradients)")
    if case.train:
        for i, (g, r) in enumerate(zip(got["train_step"], ref["train_step"], strict=True)):
            close_dicts(g[0], r[0], f"params after train_step {i + 1}")
            close_dicts(g[1], r[1], f"opt_state after train_step {i + 1}")
            close_dicts(g[2], r[2], f"final state of train_step {i + 1}")
            close_dicts(g[3], r[3], f"metrics of train_step {i + 1}")


FD_CASES = [c for c, case in CASES.items() if case.grads and not case.truncated]


@pytest.mark.parametrize("case_id", FD_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(backend, case_id, tmp_dir):
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, case_id, tmp_dir)
    params = as_np(mod.init_params(0, "float64"))
    xs, ys, lengths, resets = data(mod, case_id)
    rng = np.random.default_rng(12)
    state = {
        k: rng.normal(scale=0.5, size=v.shape)
        for k, v in as_np(mod.initial_state(B, "float64")).items()
    }

    def loss(params, xs, state):
        return float(mod.loss_and_grad(params, xs, ys, state, lengths, resets, wrt_inputs=True)[0])

    _, grads, _ = mod.loss_and_grad(params, xs, ys, state, lengths, resets, wrt_inputs=True)
    grads = as_np(grads)
    eps = 1e-5
    # one random direction per parameter tensor, per initial-state entry, and the inputs
    targets = [("param", k) for k in params] + [("state", k) for k in state]
    if mod.MODEL["input"]["kind"] == "dense":
        targets.append(("xs", "xs"))
    for kind, k in targets:
        base = {"param": params, "state": state, "xs": {"xs": xs}}[kind]
        d = rng.normal(size=np.shape(base[k]))

        def at(sign, kind=kind, k=k, d=d, base=base):
            moved = dict(base)
            moved[k] = base[k] + sign * eps * d
            p = moved if kind == "param" else params
            s = moved if kind == "state" else state
            x = moved["xs"] if kind == "xs" else xs
            return loss(p, x, s)

        fd = (at(1.0) - at(-1.0)) / (2 * eps)
        key = {"param": k, "state": "state/" + k, "xs": "xs"}[kind]
        an = float(np.sum(grads[key] * d))
        # central differences: truncation ~eps^2, rounding ~1e-16 / eps
        tol = 1e-6 * max(abs(fd), abs(an)) + 1e-9
        assert abs(fd - an) <= tol, f"{key}: finite difference {fd!r}, gradient {an!r}"


def repo_specs():
    root = ROOT / "specs"
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in (".rnn", ".yaml", ".yml")
        and "lib" not in p.relative_to(root).parts
        and "data" not in p.parts
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_files_are_ruff_clean(backend, tmp_path):
    """Every case and every spec in specs/: `ruff check` and `ruff format --check` pass."""
    import shutil
    import subprocess

    from rnnc.compiler import compile_file

    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    for case_id, case in CASES.items():
        program = build(parse_spec(case.text, f"{case_id}.rnn"), Sizes(case.n_in, case.n_out))
        name = "case_" + "".join(c if c.isalnum() else "_" for c in case_id)
        (tmp_path / f"{name}.py").write_text(get_backend(backend).emit(program))
    for i, path in enumerate(repo_specs()):
        source = compile_file(
            path.relative_to(ROOT) if path.is_relative_to(ROOT) else path, backend
        )
        (tmp_path / f"spec_{i}_{path.stem}.py").write_text(source)
    cfg = ["--config", str(ROOT / "pyproject.toml")]
    for cmd in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        r = subprocess.run(
            [ruff, *cmd, *cfg, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


# --------------------------------------------------- every spec in specs/


def _spec_outputs(mod, seed: int):
    """forward, loss_and_grad and one train_step on small random data (B=2, T=7)."""
    xs, ys = inputs_and_targets(mod, np.random.default_rng(seed), 2, 7)
    params = mod.init_params(0, "float64")
    y, final = mod.forward(params, xs)
    loss, grads, gfinal = mod.loss_and_grad(params, xs, ys)
    opt = mod.init_opt_state(params)
    new, opt, _, metrics = mod.train_step(params, opt, xs, ys)
    return {"forward": (as_np(y), as_np(final)), "loss": float(loss), "grads": as_np(grads),
            "final": as_np(gfinal), "train_step": (as_np(new), as_np(opt), as_np(metrics))}


@pytest.mark.parametrize("path", repo_specs(), ids=lambda p: str(p.relative_to(ROOT / "specs")))
@pytest.mark.parametrize("backend", OTHERS)
def test_repo_spec_agrees_with_numpy(backend, path, tmp_dir):
    """Every spec in specs/ (its own sizes, windows, updater, clipping, l1/l2): the backend's
    forward, loss, gradients and one train_step equal the NumPy backend's in float64."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    from rnnc.spec import load_spec

    program = build(load_spec(path), base_dir=path.parent)
    got = _spec_outputs(_load(get_backend(backend).emit(program), tmp_dir, path.stem), 1)
    ref = _spec_outputs(_load(get_backend("numpy").emit(program), tmp_dir, path.stem), 1)
    close(got["forward"][0], ref["forward"][0], "forward outputs")
    close_dicts(got["forward"][1], ref["forward"][1], "forward final state")
    close(got["loss"], ref["loss"], "loss")
    close_dicts(got["grads"], ref["grads"], "grads")
    close_dicts(got["final"], ref["final"], "loss_and_grad final state")
    for a, r, what in zip(got["train_step"], ref["train_step"], ("params", "opt", "metrics"),
                          strict=True):
        close_dicts(a, r, f"train_step {what}")


# Each entry point's arguments of the wrong shape: one ValueError that names the
# argument, the shape it needs and the shape it got (never a traceback from deep inside
# NumPy or a JAX broadcast). (spec, good inputs and targets at B = 2, T = 5)
SHAPE_SPECS = {
    "onehot_per_step": "specs/gru.yaml",
    "onehot_last": "specs/many_to_one_gru.rnn",
    "dense_linear": "specs/sine_mse.rnn",
}


@pytest.mark.parametrize("spec", list(SHAPE_SPECS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_shapes_are_one_clear_error(backend, spec, tmp_dir):
    from rnnc.compiler import compile_file

    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = _load(compile_file(SHAPE_SPECS[spec], backend), tmp_dir, f"shapes_{backend}_{spec}")
    rng = np.random.default_rng(0)
    xs, ys = inputs_and_targets(mod, rng, 2, 5)
    params = mod.init_params(0)
    mod.forward(params, xs)  # the good shapes run
    mod.loss_and_grad(params, xs, ys)
    dense = mod.MODEL["input"]["kind"] == "dense"
    width = mod.MODEL["input"]["size"] + 1 if dense else 2  # a feature axis too many / wrong
    cases = [
        (lambda: mod.forward(params, np.zeros((3,))), r"xs: expected .* of shape \(batch, time"),
        (lambda: mod.forward(params, np.zeros((2, 5, width))), r"xs: .*got shape \(2, 5, "),
        (lambda: mod.loss_and_grad(params, xs, ys[:1]), r"ys: expected .* of shape \(2,"),
        (lambda: mod.forward(params, xs, lengths=np.array([5, 5, 5])), r"lengths: .*\(2,\)"),
        (lambda: mod.forward(params, xs, resets=np.zeros((2, 4), bool)), r"resets: .*\(2, 5\)"),
        (lambda: mod.forward(params, xs, state={}), r"state: no entry 'layer1\.h'"),
        (lambda: mod.forward(params, xs, state={k: np.zeros((3, *s)) for k, s in
                                                mod.STATE_SHAPES.items()}),
         r"state\['layer1\.h'\]: expected shape \(2, "),
        (lambda: mod.step(params, xs), r"x_t: expected .* of shape \(batch,"),
    ]
    opt = mod.init_opt_state(params)
    cases.append((lambda: mod.train_step(params, opt, xs, ys[:1]), r"ys: expected"))
    if backend == "numpy" and not dense:  # concrete token ids: their range is checked too
        V = mod.MODEL["input"]["vocab"]
        cases.append((lambda: mod.forward(params, np.full((2, 5), V)), rf"in 0\.\.{V - 1}, got"))
        cases.append((lambda: mod.forward(params, np.full((2, 5), -1)), rf"in 0\.\.{V - 1}, got"))
        cases.append((lambda: mod.forward(params, xs.astype(float)), r"must be integers"))
    # lengths' dtype is static (checked under jit too); their values, NumPy only
    cases.append((lambda: mod.forward(params, xs, lengths=np.array([5.0, 2.0])),
                  r"lengths: expected integers, got dtype float64"))
    if backend == "numpy":
        cases.append((lambda: mod.forward(params, xs, lengths=np.array([5, 6])),
                      r"lengths: expected values in 0\.\.5, got 5\.\.6"))
        cases.append((lambda: mod.loss_and_grad(params, xs, ys, lengths=np.array([-1, 5])),
                      r"lengths: expected values in 0\.\.5, got -1\.\.5"))
    if backend == "numpy" and mod.MODEL["head"]["kind"] == "softmax":  # class ids too
        C = mod.MODEL["head"]["output_size"]
        for bad in (ys + C, ys - C):  # past the end, and negative (which used to wrap around)
            cases.append((lambda bad=bad: mod.loss_and_grad(params, xs, bad),
                          rf"ys: class ids must be in 0\.\.{C - 1}, got"))
        cases.append((lambda: mod.loss_and_grad(params, xs, ys.astype(float)),
                      r"ys: class ids must be integers"))
        cases.append((lambda: mod.train_step(params, opt, xs, ys + C), r"ys: class ids"))
    if mod.MODEL["head"]["at"] == "last":  # no step to read
        cases.append((lambda: mod.forward(params, xs[:, :0]), r"xs: a last-step head needs"))
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    if backend == "jax":  # jit would pass a list on as traced scalars: one TypeError
        for call in (lambda: mod.forward(params, xs.tolist()),
                     lambda: mod.loss_and_grad(params, xs, ys.tolist()),
                     lambda: mod.train_step(params, opt, xs.tolist(), ys)):
            with pytest.raises(TypeError, match=r"(xs|ys): expected an array, got a list"):
                call()
    else:  # the NumPy module takes lists
        close = np.testing.assert_allclose
        close(mod.forward(params, xs.tolist())[0], mod.forward(params, xs)[0])
    if backend == "numpy":  # a dropout rng that is not a Generator: one TypeError
        with pytest.raises(TypeError, match=r"rng: expected a numpy Generator .*got int"):
            mod.loss_and_grad(params, xs, ys, rng=0)


@pytest.mark.parametrize("spec", ["onehot_last", "dense_linear"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_and_targets_take_the_params_dtype(backend, spec, tmp_dir):
    """The computation dtype is the params' (docs: "Arrays"): a given state, or targets,
    of another float dtype are converted, never promoting the computation. float64 params
    with initial_state(B)'s default float32 state used to fail inside lax.scan (JAX);
    float32 params with a float64 state or float64 targets computed in float64 (NumPy)."""
    from rnnc.compiler import compile_file

    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = _load(compile_file(SHAPE_SPECS[spec], backend), tmp_dir, f"dtypes_{backend}_{spec}")
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 5)
    if mod.MODEL["head"]["kind"] == "linear":
        ys = ys.astype(np.float64)
    for p_dtype, s_dtype in (("float64", "float32"), ("float32", "float64")):
        params = mod.init_params(0, p_dtype)
        state = mod.initial_state(2, s_dtype)
        same = {k: v.dtype == np.dtype(p_dtype) for k, v in state.items()}
        ys_out, final = mod.forward(params, xs, state)
        assert ys_out.dtype == p_dtype and all(v.dtype == p_dtype for v in final.values())
        ref = mod.forward(params, xs)[0]  # the zero state in the right dtype: same numbers
        np.testing.assert_allclose(np.asarray(ys_out), np.asarray(ref), rtol=1e-6)
        y_t, s1 = mod.step(params, xs[:, 0], state)
        assert y_t.dtype == p_dtype and all(v.dtype == p_dtype for v in s1.values())
        _, grads, final = mod.loss_and_grad(params, xs, ys, state)
        assert all(g.dtype == p_dtype for g in grads.values()), {k: g.dtype for k, g in
                                                                 grads.items()}
        assert all(v.dtype == p_dtype for v in final.values())
        new, _, final, _ = mod.train_step(params, mod.init_opt_state(params), xs, ys, state)
        assert all(v.dtype == p_dtype for v in new.values())
        assert all(v.dtype == p_dtype for v in final.values())
        assert not any(same.values())  # the state given really was of the other dtype


CONTRACT_DATA = ("SPEC", "SPEC_SHA256", "PARAM_SHAPES", "PARAM_INITS", "STATE_SHAPES", "MODEL",
                 "TRAIN")


@pytest.mark.parametrize("spec", ["specs/bidirectional.yaml", "specs/sine_mse.rnn"])
@pytest.mark.parametrize("backend", OTHERS)
def test_contract_constants_equal_numpys(backend, spec, tmp_dir):
    """The plain-data constants of docs/generated-module.md ("Names") are the same in
    every backend: the JAX module's MODEL had extra keys, TRAIN["data"] flattened the
    dataset's options, and PARAM_INITS gave vectors fans the NumPy module left None."""
    from rnnc.compiler import compile_file

    if not backend_available(backend) or not backend_available("numpy"):
        pytest.skip(f"backend {backend} or numpy is not available")
    stem = Path(spec).stem
    ref = _load(compile_file(spec, "numpy"), tmp_dir, f"contract_numpy_{stem}")
    mod = _load(compile_file(spec, backend), tmp_dir, f"contract_{backend}_{stem}")
    for name in CONTRACT_DATA:
        assert getattr(mod, name) == getattr(ref, name), name
    assert ref.TRAIN["data"]["options"]["n"] > 0 and "hidden" in ref.MODEL["layers"][0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_valid_step_is_loss_zero(backend, tmp_dir):
    """A call with nothing to score (every length 0, T = 0, B = 0): loss 0 and zero
    gradients in every backend (docs: "Head and loss"). The NumPy module raised a bare
    ZeroDivisionError and the JAX module returned a nan loss."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, "stack+lengths+resets", tmp_dir)
    params = mod.init_params(0, "float64")
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    for args, lengths in (((xs, ys), np.array([0, 0])), ((xs[:, :0], ys[:, :0]), None),
                          ((xs[:0], ys[:0]), None)):
        loss, grads, _ = mod.loss_and_grad(params, *args, lengths=lengths)
        assert float(loss) == 0.0
        for k, g in grads.items():
            assert np.all(np.asarray(g) == 0.0), k
    _, _, _, metrics = mod.train_step(params, mod.init_opt_state(params), xs, ys, None,
                                      np.array([0, 0]))
    assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0


LAST_CASES = ["custom_cell+linear_last", "bidirectional_sum+residual+last", "backward+last",
              "bptt_k1<k2+last", "bptt_k1<k2+backward+last"]


@pytest.mark.parametrize("case_id", LAST_CASES)
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_a_row_of_length_0_has_no_last_step(backend, case_id, tmp_dir):
    """A last head read a row of length 0 at t = -1 (the padded step T - 1), so its padding
    changed the loss (and the JAX full-BPTT path counted the row where the truncated one
    did not). It reads zeros and does not count: the loss and gradients are those of the
    other rows alone, whatever the padding holds."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, case_id, tmp_dir)
    params = mod.init_params(0, "float64")
    rng = np.random.default_rng(5)
    xs, ys = inputs_and_targets(mod, rng, 3, 6)
    lengths = np.array([6, 0, 4])
    loss, grads, _ = mod.loss_and_grad(params, xs, ys, lengths=lengths)
    keep = [0, 2]
    ref_loss, ref_grads, _ = mod.loss_and_grad(params, xs[keep], ys[keep], lengths=lengths[keep])
    close(loss, ref_loss, "loss")
    close_dicts(grads, ref_grads, "grads")
    other, _ = inputs_and_targets(mod, rng, 3, 6)
    xs2 = np.array(xs)
    xs2[1] = np.asarray(other)[1]  # other padding in the empty row
    close(mod.loss_and_grad(params, xs2, ys, lengths=lengths)[0], loss, "loss, other padding")
    out, _ = mod.forward(params, xs, lengths=lengths)
    b = np.asarray(params["head.b"])
    if mod.MODEL["head"]["kind"] == "softmax":
        b = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
    close(np.asarray(out)[1], b, "forward of the empty row: the head of zeros")


@pytest.mark.parametrize("case_id", ["bidirectional_sum+residual+last", "backward+last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unsigned_lengths_are_lengths(backend, case_id, tmp_dir):
    """`lengths` may be any integer dtype (docs: "Arrays"). The NumPy module computed a
    last head's step as lengths - 1 in the given dtype, so an unsigned length 0 wrapped
    around to 255 (uint8) and the call failed with an IndexError."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, case_id, tmp_dir)
    params = mod.init_params(0, "float64")
    xs, ys = inputs_and_targets(mod, np.random.default_rng(6), 3, 6)
    lengths = np.array([6, 0, 4])
    ref_out, ref_state = mod.forward(params, xs, lengths=lengths)
    ref_loss, ref_grads, _ = mod.loss_and_grad(params, xs, ys, lengths=lengths)
    for dtype in (np.uint8, np.uint64, np.int8):
        out, state = mod.forward(params, xs, lengths=lengths.astype(dtype))
        close(out, ref_out, f"forward, {dtype.__name__} lengths")
        close_dicts(state, ref_state, f"final state, {dtype.__name__} lengths")
        loss, grads, _ = mod.loss_and_grad(params, xs, ys, lengths=lengths.astype(dtype))
        close(loss, ref_loss, f"loss, {dtype.__name__} lengths")
        close_dicts(grads, ref_grads, f"grads, {dtype.__name__} lengths")


@pytest.mark.parametrize("case_id", ["backward+last", "bidirectional_sum+residual+last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_refuses_layers_that_run_backward(backend, case_id, tmp_dir):
    """step() cannot run a layer that reads the sequence from its end (docs: "Names"). The
    NumPy module refused bidirectional layers only: with a `direction: backward` layer it
    ran that layer's cell on the single step, an output forward() never gives. Both name
    the layer, in the same words (the JAX module's message named none)."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, case_id, tmp_dir)
    params = mod.init_params(0)
    xs, _ = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    why = "is bidirectional" if "bidirectional" in case_id else "runs backward in time"
    with pytest.raises(NotImplementedError, match=rf"step\(\) runs one time step, but layer "
                                                  rf"layer1 {why} and needs the whole sequence: "
                                                  r"use forward\(\)"):
        mod.step(params, xs[:, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_that_is_not_a_dict_is_one_type_error(backend, tmp_dir):
    """`state` is a dict {"<layer>.<state>": (B, size)} (docs: "Names"). An array in its
    place gave the NumPy module's "state: no entry 'layer1.h'" (an array has no entries,
    so `in` compared elements) and the JAX module's bare "Array.__contains__: unsupported
    operand type" from inside the check."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, "stack+lengths+resets", tmp_dir)
    params = mod.init_params(0)
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    h = np.zeros((2, next(iter(mod.STATE_SHAPES.values()))[0]), np.float32)
    opt = mod.init_opt_state(params)
    for bad in (h, [h], jax.numpy.asarray(h) if jax is not None else h):
        for call, args in ((mod.forward, (params, xs, bad)), (mod.step, (params, xs[:, 0], bad)),
                           (mod.loss_and_grad, (params, xs, ys, bad)),
                           (mod.train_step, (params, opt, xs, ys, bad))):
            with pytest.raises(TypeError, match=r"state: expected a dict .*initial_state"):
                call(*args)


@pytest.mark.parametrize("spec", ["specs/bidirectional.yaml", "specs/classifier.rnn"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_spec_sha256_is_the_hash_of_spec(backend, spec, tmp_dir):
    """SPEC_SHA256 is what docs/generated-module.md says it is, so a user can check a module
    against a spec: sha256 of SPEC as compact, key-sorted, ASCII JSON (the same for a spec's
    YAML and text forms), also on the header's `# spec_sha256:` line."""
    import hashlib
    import json

    from rnnc.compiler import compile_file

    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    source = compile_file(spec, backend)
    mod = _load(source, tmp_dir, f"sha_{backend}_{Path(spec).stem}")
    blob = json.dumps(mod.SPEC, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert mod.SPEC_SHA256 == hashlib.sha256(blob.encode()).hexdigest()
    assert f"# spec_sha256: {mod.SPEC_SHA256}  backend: {backend}\n" in source


@pytest.mark.parametrize("backend", BACKENDS)
def test_boolean_token_ids_are_one_clear_error(backend, tmp_dir):
    """Token ids are integers (docs: "Arrays"; a one-hot input of the JAX module also takes
    floats). Boolean ids gave the JAX module a bare "iota does not accept dtype bool" from
    inside the one-hot encoding; both modules now refuse them naming the argument."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, "stack+lengths+resets", tmp_dir)
    assert mod.MODEL["input"]["kind"] == "onehot"
    params = mod.init_params(0)
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    ids = np.zeros((2, 3), bool)
    for call, args in ((mod.forward, (params, ids)), (mod.step, (params, ids[:, 0])),
                       (mod.loss_and_grad, (params, ids, ys))):
        with pytest.raises(ValueError, match=r"(xs|x_t): token ids must be integers, got "
                                             r"dtype bool"):
            call(*args)


def _entry_points(mod, xs, ys, opt):
    """Every entry point that takes params, as (name, call(params)); step and prepare_step
    only where the model can run one step."""
    calls = [("forward", lambda p: mod.forward(p, xs)),
             ("loss_and_grad", lambda p: mod.loss_and_grad(p, xs, ys)),
             ("train_step", lambda p: mod.train_step(p, opt, xs, ys)),
             ("init_opt_state", lambda p: mod.init_opt_state(p))]
    if all(la["directions"] == ["fwd"] for la in mod.MODEL["layers"]):
        calls.append(("step", lambda p: mod.step(p, np.asarray(xs)[:, 0])))
        if hasattr(mod, "prepare_step"):
            calls.append(("prepare_step", lambda p: mod.prepare_step(p)))
    return calls


@pytest.mark.parametrize("case_id", ["stack+lengths+resets", "bidirectional_concat+embedding",
                                     "custom_cell+linear_last", "bidirectional_sum+residual+last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_params_that_are_not_init_params_are_one_clear_error(backend, case_id, tmp_dir):
    """`params` is what init_params gives (docs: "Arrays"). A missing entry was a bare
    KeyError from inside a cell, a wrong shape a NumPy or XLA broadcasting error (or, for a
    linear head's head.W with a row too many, silently an output too wide), an unknown
    entry was ignored, integer params ran in NumPy (float64 or int32 outputs) and failed
    inside jax.nn.sigmoid in JAX, and params of two float dtypes gave NumPy outputs and a
    final state of different dtypes. Each is one error naming the entry, at every entry
    point, the same in both modules."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, case_id, tmp_dir)
    params = mod.init_params(0, "float64")
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    first = next(iter(mod.PARAM_SHAPES))
    out, width = mod.PARAM_SHAPES["head.W"]

    def changed(name, value):
        return {**params, name: value}

    bad = [
        ({k: v for k, v in params.items() if k != first}, ValueError,
         rf"params: no entry '{first}' \(init_params\(\) has every name"),
        ({**params, "junk": np.zeros(3)}, ValueError, r"params: unknown entry 'junk'"),
        (changed("head.W", np.zeros((out + 1, width))), ValueError,
         rf"params\['head\.W'\]: expected shape \({out}, {width}\), got shape "
         rf"\({out + 1}, {width}\)"),
        (changed("head.b", np.zeros((out, 1))), ValueError, r"params\['head\.b'\]: expected shape"),
        ({k: np.asarray(v).astype(np.int32) for k, v in params.items()}, ValueError,
         rf"params\['{first}'\]: expected floats, got dtype int32"),
        (changed("head.b", np.asarray(params["head.b"]).astype(np.float32)), ValueError,
         r"params\['head\.b'\]: expected dtype float64 .*got dtype float32"),
        (changed(first, np.asarray(params[first]).tolist()), TypeError,
         rf"params\['{first}'\]: expected an array, got a list"),
        (None, TypeError, r"params: expected a dict \{name: array\} like init_params\(\), got a "
                          r"NoneType"),
        (list(params.values()), TypeError, r"params: expected a dict .*got a list"),
    ]
    calls = _entry_points(mod, xs, ys, mod.init_opt_state(params))
    for _, call in calls:  # the good params run everywhere
        call(params)
    for name, call in calls:
        for p, error, message in bad:
            with pytest.raises(error, match=message):
                call(p)
                pytest.fail(f"{name} took bad params ({message})")


def _dropout_module(backend, tmp_dir):
    key = (backend, "dropout")
    if key not in _MODULES:
        text = model(["lstm(hidden: 3, dropout: 0.5)"])
        program = build(parse_spec(text, "dropout.rnn"), Sizes(5, 4))
        _MODULES[key] = _load(get_backend(backend).emit(program), tmp_dir, f"{backend}_dropout")
    return _MODULES[key]


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rng_ys_and_opt_state_are_checked_alike(backend, dropout, tmp_dir):
    """The JAX module took an int `rng` silently without dropout (and failed inside
    jax.random with it) where the NumPy module refuses it; took class ids of a float or
    boolean dtype where NumPy refuses them; `ys=None` and an `opt_state` that is not
    init_opt_state's failed deep inside (IndexError, swapaxes, KeyError 'step') in both; the
    NumPy module parsed string values of a linear head. Each is now one error naming the
    argument, the same type in both modules (JAX refuses strings at its jit boundary)."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = (_dropout_module(backend, tmp_dir) if dropout
           else module(backend, "stack+lengths+resets", tmp_dir))
    assert bool(mod.MODEL["layers"][0]["dropout"]) == dropout
    params = mod.init_params(0, "float64")
    opt = mod.init_opt_state(params)
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    good_rng = (np.random.default_rng(0) if backend == "numpy" else jax.random.key(0))
    loss, _, _ = mod.loss_and_grad(params, xs, ys, rng=good_rng)
    assert np.isfinite(float(loss))
    if backend == "jax":  # the raw uint32 key works as well
        mod.train_step(params, opt, xs, ys, rng=jax.random.PRNGKey(0))
    cases = [
        (lambda: mod.loss_and_grad(params, xs, ys, rng=0), TypeError, r"rng: expected a "),
        (lambda: mod.train_step(params, opt, xs, ys, rng=7), TypeError, r"rng: expected a "),
        (lambda: mod.loss_and_grad(params, xs, ys.astype(np.float32)), ValueError,
         r"ys: class ids must be integers, got dtype float32"),
        (lambda: mod.train_step(params, opt, xs, ys.astype(bool)), ValueError,
         r"ys: class ids must be integers, got dtype bool"),
        (lambda: mod.loss_and_grad(params, xs, None), TypeError, r"ys: expected the targets"),
        (lambda: mod.train_step(params, None, xs, ys), TypeError,
         r"opt_state: expected the dict init_opt_state\(params\) gives, got a NoneType"),
        (lambda: mod.train_step(params, {}, xs, ys), ValueError,
         r"opt_state: no entry 'step' and \d+ more \(init_opt_state\(params\) has them all"),
    ]
    if backend == "jax":  # a batch of keys is not one key
        keys = jax.random.split(jax.random.key(0), 2)
        cases.append((lambda: mod.loss_and_grad(params, xs, ys, rng=keys), TypeError,
                      r"rng: expected a JAX PRNG key \(jax\.random\.key\(seed\)\), got dtype "
                      r"key<fry>, shape \(2,\)"))
    slot = next(k for k in opt if k != "step")  # the default updater (adam) has slots
    shape = mod.PARAM_SHAPES[slot.split("/", 1)[1]]
    cases.append((lambda: mod.train_step(params, {**opt, slot: np.zeros(shape + (1,))}, xs, ys),
                  ValueError, rf"opt_state\['{slot}'\]: expected shape"))
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    if backend == "numpy":  # a linear head's values: strings were parsed ("0.5" read as 0.5)
        lin = module(backend, "custom_cell+linear_last", tmp_dir)
        p = lin.init_params(0)
        lxs, lys = inputs_and_targets(lin, np.random.default_rng(0), 2, 3)
        with pytest.raises(ValueError, match=r"ys: expected values \(numbers\), got dtype <U"):
            lin.loss_and_grad(p, lxs, lys.astype(str))
        lin.loss_and_grad(p, lxs, lys.astype(np.int64))  # integers are values


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_params_and_initial_state_refuse_what_is_no_float_model(backend, tmp_dir):
    """init_params(seed, "int32") and initial_state(B, "int32") gave integer parameters
    and state (and bool, complex64 too); initial_state(-1) was a ValueError in NumPy and
    a TypeError in JAX, and a seed of -1 NumPy's bare "expected non-negative integer". One
    error each now, the same type and words in both modules; a JAX state of lists one
    TypeError (it was a TracerArrayConversionError), which the NumPy module takes."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} is not available")
    mod = module(backend, "stack+lengths+resets", tmp_dir)
    for dtype in ("int32", "bool", "complex64", np.int64):
        for fn, args in ((mod.init_params, (0, dtype)), (mod.initial_state, (2, dtype))):
            with pytest.raises(ValueError, match=rf"{fn.__name__}: dtype must be a float type "
                                                 r"such as 'float32', got "):
                fn(*args)
    for dtype in ("foo", None):
        with pytest.raises(TypeError, match=r"init_params: dtype must be a float type"):
            mod.init_params(0, dtype)
    with pytest.raises(ValueError, match=r"init_params: seed must be an int 0 or more, got -1"):
        mod.init_params(-1)
    with pytest.raises(TypeError, match=r"init_params: seed must be an int 0 or more, got 1\.5"):
        mod.init_params(1.5)
    with pytest.raises(ValueError, match=r"initial_state: batch must be 0 or more, got -1"):
        mod.initial_state(-1)
    for batch in (1.5, None, "2", True):
        with pytest.raises(TypeError, match=r"initial_state: batch must be an int, got a "):
            mod.initial_state(batch)
    for dtype in ("float16", "float32", "float64"):  # every float type still works
        assert all(v.dtype == dtype for v in mod.init_params(3, dtype).values())
        assert all(v.shape == (0, *s) and v.dtype == dtype
                   for v, s in zip(mod.initial_state(np.int64(0), dtype).values(),
                                   mod.STATE_SHAPES.values(), strict=True))
    params = mod.init_params(0)
    xs, _ = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    state = {k: np.zeros((2, *s)).tolist() for k, s in mod.STATE_SHAPES.items()}
    if backend == "jax":
        with pytest.raises(TypeError, match=r"state\['layer1\.h'\]: expected an array, got a "
                                             r"list"):
            mod.forward(params, xs, state)
    else:
        np.testing.assert_allclose(mod.forward(params, xs, state)[0], mod.forward(params, xs)[0])


def test_jax_mesh_and_optimizer_arguments_are_checked(tmp_dir):
    """train_step(mesh=1) failed inside replicate ('int' object has no attribute 'size'),
    make_mesh(1.5) said "must be in 1..N, got 1.5", shard_batch of a list failed inside
    device_put, and optimizer="adam" inside the traced step: one TypeError each."""
    if not backend_available("jax"):
        pytest.skip("backend jax is not available")
    mod = module("jax", "stack+lengths+resets", tmp_dir)
    params = mod.init_params(0)
    opt = mod.init_opt_state(params)
    xs, ys = inputs_and_targets(mod, np.random.default_rng(0), 2, 3)
    mesh = mod.make_mesh(1)
    mod.train_step(params, opt, xs, ys, mesh=mesh)  # the good arguments run
    cases = [
        (lambda: mod.train_step(params, opt, xs, ys, mesh=1), r"mesh: expected make_mesh"),
        (lambda: mod.make_mesh(1.5), r"make_mesh: n_devices must be an int or None, got a float"),
        (lambda: mod.shard_batch(mesh, xs, ys.tolist()), r"shard_batch: expected arrays, got a"),
        (lambda: mod.train_step(params, opt, xs, ys, optimizer="adam"),
         r"optimizer: expected an optax GradientTransformation, got a str"),
        (lambda: mod.init_opt_state(params, "adam"), r"optimizer: expected an optax"),
    ]
    for call, message in cases:
        with pytest.raises(TypeError, match=message):
            call()
