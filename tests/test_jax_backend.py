"""The JAX backend against independent implementations, and its generated-file contract.

- PyTorch (float64): nn.RNN (tanh, relu), nn.LSTM (1 and 2 layers, bidirectional, packed
  sequences of different lengths), nn.GRU: outputs, final states, loss and the gradients
  w.r.t. parameters, inputs and initial state, to 1e-9.
- ONNX reference operators: GRU with linear_before_reset=0 (rnnc's ``reset: "before"``)
  and LSTM with peepholes, forward values.
- Truncated BPTT (k1 = k2 and k1 < k2) against a window-by-window reference built from
  ``forward`` and ``jax.grad``.
- The file: ruff-clean, deterministic, importable without rnnc, jitted entry points.
"""

import ast
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xla_flags
from generated_modules import import_source


FAST_COMPILE = xla_flags.fast_compile()  # what conftest.py sets, for child processes

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

from rnnc.compiler import build  # noqa: E402
from rnnc.ir.lower import Sizes  # noqa: E402
from rnnc.spec import parse_spec  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-9
_MODULES: dict[str, object] = {}


def emit(text, n_in, n_out, name="case.rnn", disable=(), vjp=True, layout="auto"):
    from rnnc.backends.jax.emitter import emit as emit_jax

    program = build(parse_spec(text, name), Sizes(n_in, n_out), disable)
    return emit_jax(program, vjp=vjp, layout=layout)


def load(source, tmp_dir):
    """Import a generated module (cached by source, so jitted functions are reused)."""
    if source not in _MODULES:
        _MODULES[source] = import_source(source, tmp_dir, "rnnc_jax_case")
    return _MODULES[source]


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_modules")


def close(a, b, rtol=RTOL, what=""):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    scale = max(np.abs(b).max(initial=0.0), 1e-3)
    err = np.abs(a - b).max(initial=0.0) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g}"


def close_results(a, b, what=""):
    """Two modules' loss_and_grad results agree: the loss, every gradient (the same
    names) and every final state."""
    close(a[0], b[0], what=f"loss{what}")
    assert set(a[1]) == set(b[1])
    for k in b[1]:
        close(a[1][k], b[1][k], what=f"d/d {k}{what}")
    for k in b[2]:
        close(a[2][k], b[2][k], what=f"final {k}{what}")


# ---------------------------------------------------------------------- PyTorch

B, T, F, H, C = 3, 5, 3, 4, 5

TORCH_CASES = {
    # id: (torch module, rnnc layer, layers, bidirectional)
    "rnn_tanh": ("RNN", "elman(hidden: 4)", 1, False),
    "rnn_relu": ("RNN", "elman(hidden: 4, act: relu)", 1, False),
    "lstm": ("LSTM", "lstm(hidden: 4)", 1, False),
    "lstm_2layers": ("LSTM", "lstm(hidden: 4)", 2, False),
    "lstm_bidirectional": ("LSTM", "lstm(hidden: 4, direction: bidirectional)", 1, True),
    "lstm_2layers_bidirectional": ("LSTM", "lstm(hidden: 4, direction: bidirectional)", 2, True),
    "gru": ("GRU", "gru(hidden: 4)", 1, False),
}


def torch_spec(layer, layers):
    body = "\n".join(f"  layer {layer}" for _ in range(layers))
    return (
        f"model oracle {{\n  input dense(features: {F})\n{body}\n"
        f"  head softmax(at: per_step, classes: {C})\n}}\n"
    )


def torch_params(kind, rnn, layers, bidir, head, grad=False):
    """rnnc parameters (or their gradients) from a torch RNN and Linear head."""

    def get(name):
        t = getattr(rnn, name)
        t = t.grad if grad else t.detach()
        return t.numpy().copy()

    out = {}
    dirs = [("fwd", ""), ("bwd", "_reverse")] if bidir else [("fwd", "")]
    for layer, (d, suffix) in itertools.product(range(layers), dirs):
        prefix = f"layer{layer + 1}." + (f"{d}." if bidir else "")
        w, u = get(f"weight_ih_l{layer}{suffix}"), get(f"weight_hh_l{layer}{suffix}")
        bi, bh = get(f"bias_ih_l{layer}{suffix}"), get(f"bias_hh_l{layer}{suffix}")
        # the two biases enter as a sum: the gradient of that sum is either one's gradient
        bsum = bi if grad else bi + bh
        if kind == "RNN":
            out.update({prefix + "W": w, prefix + "U": u, prefix + "b": bsum})
        elif kind == "LSTM":
            for gate, ws, us, bs in zip(
                "ifgo", np.split(w, 4), np.split(u, 4), np.split(bsum, 4), strict=True
            ):
                out.update(
                    {prefix + f"W_{gate}": ws, prefix + f"U_{gate}": us, prefix + f"b_{gate}": bs}
                )
        else:  # GRU: torch's rows are r, z, n; b_hn stays separate
            (wr, wz, wn), (ur, uz, un) = np.split(w, 3), np.split(u, 3)
            (bir, biz, bin_), (bhr, bhz, bhn) = np.split(bi, 3), np.split(bh, 3)
            out.update(
                {
                    prefix + "W_z": wz,
                    prefix + "U_z": uz,
                    prefix + "W_r": wr,
                    prefix + "U_r": ur,
                    prefix + "W_n": wn,
                    prefix + "U_n": un,
                    prefix + "b_n": bin_,
                    prefix + "b_hn": bhn,
                }
            )
            out[prefix + "b_z"] = biz if grad else biz + bhz
            out[prefix + "b_r"] = bir if grad else bir + bhr
    w, b = head.weight, head.bias
    out["head.W"] = (w.grad if grad else w.detach()).numpy().copy()
    out["head.b"] = (b.grad if grad else b.detach()).numpy().copy()
    return out


def state_names(kind, layers, bidir):
    names = ["h", "c"] if kind == "LSTM" else ["h"]
    dirs = ["fwd.", "bwd."] if bidir else [""]
    return {s: [f"layer{layer + 1}.{d}{s}" for layer in range(layers) for d in dirs] for s in names}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_pytorch(case, tmp_dir):
    torch = pytest.importorskip("torch")
    kind, layer, layers, bidir = TORCH_CASES[case]
    mod = load(emit(torch_spec(layer, layers), F, C), tmp_dir)
    torch.manual_seed(0)
    opts = {"nonlinearity": "relu"} if case == "rnn_relu" else {}
    rnn = getattr(torch.nn, kind)(
        F, H, num_layers=layers, bidirectional=bidir, batch_first=True, **opts
    ).double()
    D = 2 if bidir else 1
    head = torch.nn.Linear(D * H, C).double()
    x = torch.randn(B, T, F, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, C, (B, T))
    init = {
        s: torch.randn(layers * D, B, H, dtype=torch.float64, requires_grad=True)
        for s in state_names(kind, layers, bidir)
    }
    out, hn = rnn(x, (init["h"], init["c"]) if kind == "LSTM" else init["h"])
    hn = dict(zip(["h", "c"], hn, strict=True)) if kind == "LSTM" else {"h": hn}
    logits = head(out)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1))
    loss.backward()

    params = {k: jnp.asarray(v) for k, v in torch_params(kind, rnn, layers, bidir, head).items()}
    assert set(params) == set(mod.PARAM_SHAPES)
    for k, v in params.items():
        assert v.shape == tuple(mod.PARAM_SHAPES[k]), k
    names = state_names(kind, layers, bidir)
    state = {
        n: jnp.asarray(init[s].detach().numpy()[i])
        for s, ns in names.items()
        for i, n in enumerate(ns)
    }
    xs, ys = x.detach().numpy(), y.numpy()

    probs, final = mod.forward(params, xs, state)
    close(probs, torch.softmax(logits, -1).detach().numpy(), what="outputs")
    for s, ns in names.items():
        for i, n in enumerate(ns):
            close(final[n], hn[s].detach().numpy()[i], what=f"final {n}")

    value, grads, _ = mod.loss_and_grad(params, xs, ys, state, wrt_inputs=True)
    close(value, loss.item(), what="loss")
    want = torch_params(kind, rnn, layers, bidir, head, grad=True)
    for k, g in want.items():
        close(grads[k], g, what=f"d loss / d {k}")
    close(grads["xs"], x.grad.numpy(), what="d loss / d xs")
    for s, ns in names.items():
        for i, n in enumerate(ns):
            close(grads["state/" + n], init[s].grad.numpy()[i], what=f"d loss / d {n}")


def test_lengths_match_packed_pytorch(tmp_dir):
    """Rows of different lengths: nn.LSTM over a packed sequence (both directions)."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    kind, layer, layers, bidir = TORCH_CASES["lstm_bidirectional"]
    mod = load(emit(torch_spec(layer, layers), F, C), tmp_dir)
    torch.manual_seed(1)
    rnn = torch.nn.LSTM(F, H, bidirectional=True, batch_first=True).double()
    head = torch.nn.Linear(2 * H, C).double()
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(B, T, F, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, C, (B, T))
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (hn, cn) = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    logits = head(out)
    valid = torch.arange(T)[None, :] < lengths[:, None]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1), reduction="none")
    loss = ce[valid.reshape(-1)].mean()
    loss.backward()

    params = {k: jnp.asarray(v) for k, v in torch_params(kind, rnn, 1, True, head).items()}
    xs, ys, lens = x.detach().numpy(), y.numpy(), lengths.numpy()
    probs, final = mod.forward(params, xs, lengths=lens)
    ok = valid.numpy()
    close(np.asarray(probs)[ok], torch.softmax(logits, -1).detach().numpy()[ok], what="outputs")
    for i, d in enumerate(["fwd", "bwd"]):
        close(final[f"layer1.{d}.h"], hn.detach().numpy()[i], what=f"final {d} h")
        close(final[f"layer1.{d}.c"], cn.detach().numpy()[i], what=f"final {d} c")
    value, grads, _ = mod.loss_and_grad(params, xs, ys, lengths=lens, wrt_inputs=True)
    close(value, loss.item(), what="loss")
    for k, g in torch_params(kind, rnn, 1, True, head, grad=True).items():
        close(grads[k], g, what=f"d loss / d {k}")
    close(grads["xs"], x.grad.numpy(), what="d loss / d xs")


# ------------------------------------------------------------------------- ONNX


def _onnx_run(op, attrs, inputs):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    names = list(inputs)
    node = helper.make_node(op, names, ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else []), **attrs)

    def info(name, value):
        kind = TensorProto.INT32 if value.dtype == np.int32 else TensorProto.DOUBLE
        return helper.make_tensor_value_info(name, kind, value.shape)

    steps, batch = inputs["X"].shape[:2]
    hidden = attrs["hidden_size"]
    shapes = {"Y": (steps, 1, batch, hidden), "Y_h": (1, batch, hidden), "Y_c": (1, batch, hidden)}
    graph = helper.make_graph(
        [node],
        "g",
        [info(n, v) for n, v in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.DOUBLE, shapes[n]) for n in node.output],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return ReferenceEvaluator(model).run(None, inputs)


def test_onnx_gru_reset_before(tmp_dir):
    mod = load(emit(torch_spec('gru(hidden: 4, reset: "before")', 1), F, C), tmp_dir)
    rng = np.random.default_rng(3)
    params = {k: rng.normal(0, 0.5, v) for k, v in mod.PARAM_SHAPES.items()}
    xs = rng.normal(size=(B, T, F))
    h0 = rng.normal(size=(B, H))
    p = {k[len("layer1.") :]: v for k, v in params.items() if k.startswith("layer1.")}
    assert "b_hn" not in p  # the "before" form has one bias per gate
    W = np.concatenate([p["W_z"], p["W_r"], p["W_n"]])[None]
    R = np.concatenate([p["U_z"], p["U_r"], p["U_n"]])[None]
    bias = np.concatenate([p["b_z"], p["b_r"], p["b_n"], np.zeros(3 * H)])[None]
    Y, Y_h = _onnx_run(
        "GRU",
        {"hidden_size": H, "linear_before_reset": 0},
        {
            "X": xs.transpose(1, 0, 2),
            "W": W,
            "R": R,
            "B": bias,
            "sequence_lens": np.full(B, T, np.int32),
            "initial_h": h0[None],
        },
    )
    top, final, _ = mod._layers(
        params, jnp.asarray(xs.transpose(1, 0, 2)), {"layer1.h": jnp.asarray(h0)}, None, None, None
    )
    close(top, Y[:, 0], what="Y")
    close(final["layer1.h"], Y_h[0], what="Y_h")


def test_onnx_lstm_peepholes(tmp_dir):
    mod = load(emit(torch_spec("lstm(hidden: 4, peepholes: true)", 1), F, C), tmp_dir)
    rng = np.random.default_rng(4)
    params = {k: rng.normal(0, 0.5, v) for k, v in mod.PARAM_SHAPES.items()}
    xs = rng.normal(size=(B, T, F))
    h0, c0 = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    p = {k[len("layer1.") :]: v for k, v in params.items() if k.startswith("layer1.")}
    order = "iofg"  # ONNX gate order i, o, f, c (c is rnnc's g)
    W = np.concatenate([p[f"W_{g}"] for g in order])[None]
    R = np.concatenate([p[f"U_{g}"] for g in order])[None]
    bias = np.concatenate([p[f"b_{g}"] for g in order] + [np.zeros(4 * H)])[None]
    P = np.concatenate([p["p_i"], p["p_o"], p["p_f"]])[None]
    Y, Y_h, Y_c = _onnx_run(
        "LSTM",
        {"hidden_size": H},
        {
            "X": xs.transpose(1, 0, 2),
            "W": W,
            "R": R,
            "B": bias,
            "sequence_lens": np.full(B, T, np.int32),
            "initial_h": h0[None],
            "initial_c": c0[None],
            "P": P,
        },
    )
    state = {"layer1.h": jnp.asarray(h0), "layer1.c": jnp.asarray(c0)}
    top, final, _ = mod._layers(params, jnp.asarray(xs.transpose(1, 0, 2)), state, None, None, None)
    close(top, Y[:, 0], what="Y")
    close(final["layer1.h"], Y_h[0], what="Y_h")
    close(final["layer1.c"], Y_c[0], what="Y_c")


# ------------------------------------------------------------- truncated BPTT


def tbptt_spec(k1, k2, layers=2):
    body = "\n".join(["  layer lstm(hidden: 3)", "  layer gru(hidden: 3)"][:layers])
    return (
        f"model tb {{\n  input onehot(vocab: 4)\n{body}\n"
        f"  head softmax(at: per_step, classes: 4)\n}}\n"
        f"train {{\n  data reber\n  bptt k1 {k1} k2 {k2}\n}}\n"
    )


def reference_tbptt(mod, params, xs, ys, state, k1, k2):
    """Sum over windows of the gradient of their losses, each window run with `forward`
    from a constant state (the call's initial state for windows that start at 0).

    Window j scores steps [j k1, min((j + 1) k1, T)) and reaches back to (j + 1) k1 - k2
    (the contract in docs/generated-module.md), so k1 = k2 cuts every k1 steps."""
    T = xs.shape[1]
    n = xs.shape[0] * T

    def loss(params, state):
        total = 0.0
        for lo in range(0, T, k1):
            hi = min(lo + k1, T)
            s = max(0, lo + k1 - k2)
            st = state
            if s > 0:
                _, st = mod.forward(jax.lax.stop_gradient(params), xs[:, :s], state)
                st = jax.lax.stop_gradient(st)
            probs, _ = mod.forward(params, xs[:, s:hi], st)
            p = jnp.take_along_axis(probs[:, lo - s :], ys[:, lo:hi, None], axis=-1)
            total = total - jnp.sum(jnp.log(p))
        return total / n

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, state)


@pytest.mark.parametrize(
    "k1,k2,steps",
    [
        (3, 3, 6),  # disjoint windows that tile the sequence: one scan, cut every 3 steps
        (3, 3, 7),  # the last window (the loss at 6) starts at 6: cut every 3 steps
        (2, 5, 7),  # overlapping windows
        (8, 8, 7),  # one window: full BPTT
    ],
)
def test_truncated_bptt_matches_window_reference(k1, k2, steps, tmp_dir):
    # one layer here (the matrix compares two-layer truncated BPTT with the NumPy backend)
    mod = load(emit(tbptt_spec(k1, k2, layers=1), 4, 4), tmp_dir)
    rng = np.random.default_rng(5)
    params = mod.init_params(1, "float64")
    xs, ys = rng.integers(0, 4, (2, steps)), rng.integers(0, 4, (2, steps))
    state = {k: jnp.asarray(rng.normal(size=(2,) + v)) for k, v in mod.STATE_SHAPES.items()}
    value, grads, final = mod.loss_and_grad(params, xs, ys, state, wrt_inputs=True)
    ref_value, (ref_grads, ref_state) = reference_tbptt(mod, params, xs, ys, state, k1, k2)
    close(value, ref_value, what="loss")
    for k in params:
        close(grads[k], ref_grads[k], what=f"d/d {k}")
    for k in state:
        close(grads["state/" + k], ref_state[k], what=f"d/d state {k}")
    _, want_final = mod.forward(params, xs, state)
    for k in state:
        close(final[k], want_final[k], what=f"final {k}")
    if k1 >= xs.shape[1]:  # one window: full BPTT
        full = load(emit(tbptt_spec(k1, k2, layers=1).split("train")[0], 4, 4), tmp_dir)
        fvalue, fgrads, _ = full.loss_and_grad(params, xs, ys, state)
        for k in params:
            close(grads[k], fgrads[k], what=f"full BPTT d/d {k}")


# ------------------------------------------------------------ sections, step


def test_sections_give_the_same_numbers(tmp_dir):
    """Body-only cells (no passes) and cells with invariant/hoisted sections agree."""
    text = (
        tbptt_spec(3, 3, layers=1)
        .split("train")[0]
        .replace("lstm(hidden: 3)", "lstm(hidden: 3, peepholes: true)")
    )
    from rnnc.ir.passes import PIPELINE

    passes = PIPELINE  # all of them off: body-only cells
    full = load(emit(text, 4, 4), tmp_dir)
    bare = load(emit(text, 4, 4, disable=passes), tmp_dir)
    assert "_invariant(p)" in full.__loader__.get_source(full.__name__)
    assert "_invariant(p)" not in bare.__loader__.get_source(bare.__name__)
    rng = np.random.default_rng(6)
    params = full.init_params(2, "float64")
    xs, ys = rng.integers(0, 4, (3, 6)), rng.integers(0, 4, (3, 6))
    a = full.loss_and_grad(params, xs, ys, lengths=np.array([6, 2, 4]))
    b = bare.loss_and_grad(params, xs, ys, lengths=np.array([6, 2, 4]))
    close_results(a, b)


VJP_CASES = {
    # lengths and resets, two layers (the reset and padding rules of the backward scan)
    "lstm_gru_lengths_resets": (tbptt_spec(3, 3).split("train")[0], True),
    # both directions: the backward direction's VJP scans forward in time
    "bidirectional_peephole": (
        "model b {\n  input dense(features: 4)\n"
        "  layer lstm(hidden: 3, peepholes: true, direction: bidirectional, merge: concat)\n"
        "  head linear(at: last, size: 2)\n}\n",
        False,
    ),
    # truncated BPTT: no adjoint crosses a window's start
    "tbptt": (tbptt_spec(2, 2), False),
    # a custom cell written as equations (MGU: the U_h matmul reads f * h)
    "mgu": (
        "model m {\n  input onehot(vocab: 4)\n  layer mgu(hidden: 3)\n"
        "  head softmax(at: per_step, classes: 4)\n}\n",
        False,
    ),
    # truncated BPTT with a backward direction (it enters each window at its last step):
    # k1 = k2 = 3 tiles T = 6, one scan cut every 3 steps; k1 < k2, windows side by side
    "tbptt_bidirectional_cut": (
        tbptt_spec(3, 3).replace("lstm(hidden: 3)", "lstm(hidden: 3, direction: bidirectional)"),
        True,
    ),
    "tbptt_backward_windows": (
        tbptt_spec(2, 3).replace("gru(hidden: 3)", "gru(hidden: 3, direction: backward)"),
        True,
    ),
    # six states in one cell: the step's return is split over lines, and its new state
    # was a list there, which lax.scan refused as the carry (no lengths to make it a tuple)
    "six_states": (
        "cell deep(x) {\n  state hidden, memory, extra\n  hidden' = tanh(W @ x + U @ hidden)\n"
        "  memory' = sigmoid(memory + hidden')\n  extra' = softsign(extra - memory')\n}\n"
        "model g {\n  input onehot(vocab: 4)\n  layer deep(hidden: 2)\n"
        "  layer deep(hidden: 2)\n  stack gated_feedback\n"
        "  head softmax(at: per_step, classes: 4)\n}\n",
        False,
    ),
    # feature reductions (sumf, expands, a mean's division) in the hoisted section and the
    # step, and the functions whose derivatives are written in their output
    "layernorm": (
        "cell ln(x) {\n  state h, c[2]\n  zx = W @ x\n  xc = zx - mean(zx)\n"
        "  h' = tanh(g * xc / sqrt(mean(xc * xc) + 0.01) + b + U @ h + sum(c) * v)\n"
        "  hv = h' + mean(v) * v\n"
        "  cn = elu(W2 @ hv) + log_sigmoid(V @ c) - 0.1 * log(softplus(c) + 1.0)\n"
        "  c' = cn * rsqrt(mean(cn * cn) + 1.0)\n}\n"
        "model m {\n  input dense(features: 4)\n  layer ln(hidden: 3, direction: bidirectional)\n"
        "  head linear(at: last, size: 2)\n}\n",
        True,
    ),
}


@pytest.mark.parametrize("case", list(VJP_CASES))
def test_custom_vjp_matches_autodiff_through_scan(case, tmp_dir):
    """The whole-sequence VJP (default) and JAX's autodiff through lax.scan agree on the
    loss, the final state and every gradient (parameters, inputs, initial state)."""
    text, masks = VJP_CASES[case]
    onehot = "onehot" in text
    n_out = 2 if "linear" in text else 4
    vjp = load(emit(text, 4, n_out), tmp_dir)
    scan = load(emit(text, 4, n_out, vjp=False), tmp_dir)
    assert '"vjp": {' in vjp.__loader__.get_source(vjp.__name__)
    assert '"vjp": {' not in scan.__loader__.get_source(scan.__name__)
    rng = np.random.default_rng(8)
    params = vjp.init_params(3, "float64")
    B, T = 3, 6 if "bptt k1 3 k2 3" in text else 7
    xs = rng.integers(0, 4, (B, T)) if onehot else rng.normal(size=(B, T, 4))
    ys = rng.integers(0, 4, (B, T)) if onehot else rng.normal(size=(B, 2))
    state = {k: jnp.asarray(rng.normal(size=(B,) + v)) for k, v in vjp.STATE_SHAPES.items()}
    kw = {}
    if masks:
        kw = dict(lengths=np.array([T, 3, 5]), resets=rng.random((B, T)) < 0.2)
    a = vjp.loss_and_grad(params, xs, ys, state, wrt_inputs=True, **kw)
    b = scan.loss_and_grad(params, xs, ys, state, wrt_inputs=True, **kw)
    close_results(a, b)
    assert len(vjp._VJP_SEQUENCES) == sum(len(c["vjp"]) > 0 for c in vjp.CELLS.values())
    assert not scan._VJP_SEQUENCES


LAZY_CASES = {
    # both directions of a residual first layer, lengths and resets
    "bidirectional_residual": (
        "model m {\n  input onehot(vocab: 4)\n"
        "  layer lstm(hidden: 4, direction: bidirectional, merge: sum, residual: true)\n"
        "  layer gru(hidden: 3)\n  head softmax(at: per_step, classes: 4)\n}\n",
        True,
    ),
    # truncated BPTT, windows side by side (the dense one-hot) and a backward direction
    "tbptt_windows": (
        tbptt_spec(2, 3).replace("gru(hidden: 3)", "gru(hidden: 3, direction: backward)"),
        True,
    ),
    # truncated BPTT cut every k1 steps in one scan, a custom cell (MGU) first
    "tbptt_cut_mgu": (tbptt_spec(3, 3).replace("lstm(hidden: 3)", "mgu(hidden: 3)"), False),
    # a cell that reads its input itself in the step (one-hot vectors per step from the
    # ids), under another name than x
    "reads_x": (
        "cell pass(u) {\n  state h[4]\n  h' = tanh(U @ h + u)\n}\n"
        "model m {\n  input onehot(vocab: 4)\n  layer pass(hidden: 4)\n"
        "  head softmax(at: per_step, classes: 4)\n}\n",
        True,
    ),
    # input dropout: the dropped-out inputs are dense
    "input_dropout": (
        tbptt_spec(6, 6).replace("bptt k1 6 k2 6", "dropout input 0.3 layers 0.2"),
        False,
    ),
}


@pytest.mark.parametrize("case", list(LAZY_CASES))
def test_token_ids_stand_for_one_hot_inputs_on_the_training_path(case, tmp_dir):
    """Without input gradients the objectives give a one-hot model's first layer its
    token ids (_Tokens: the hoisted W x becomes rows W.T[ids] gathered in the loop);
    loss, gradients and final state equal the dense one-hot path's (wrt_inputs=True),
    and so does one train_step (with input dropout too, which takes the dense path)."""
    text, masks = LAZY_CASES[case]
    mod = load(emit(text, 4, 4), tmp_dir)
    assert mod._LAZY == (mod._Tokens, mod._Rows)
    rng = np.random.default_rng(5)
    B, T = 3, 6
    xs, ys = rng.integers(0, 4, (B, T)), rng.integers(0, 4, (B, T))
    xs[0, 1], xs[1, 2] = -1, 4  # ids outside the vocabulary: zero one-hot vectors, zero rows
    xs = jnp.asarray(xs)  # (a NumPy xs is checked on the host: out of range is refused)
    params = mod.init_params(2, "float64")
    state = {k: jnp.asarray(rng.normal(size=(B,) + v)) for k, v in mod.STATE_SHAPES.items()}
    kw = dict(lengths=np.array([T, 2, 5]), resets=rng.random((B, T)) < 0.2) if masks else {}
    if "dropout" in text:
        kw["rng"] = jax.random.PRNGKey(7)
    enc = mod._encode_for_training(params, xs, jnp.float64)
    assert isinstance(enc, mod._Tokens) and enc.shape == (T, B, 4)
    np.testing.assert_array_equal(enc.dense(), mod._encode(params, xs, jnp.float64))
    lazy = mod.loss_and_grad(params, xs, ys, state, **kw)
    dense = mod.loss_and_grad(params, xs, ys, state, wrt_inputs=True, **kw)
    close(lazy[0], dense[0], what="loss")
    assert set(lazy[1]) == set(params)
    for k in params:
        close(lazy[1][k], dense[1][k], what=f"d/d {k}")
    for k in dense[2]:
        close(lazy[2][k], dense[2][k], what=f"final {k}")
    # ids given as floats (the dense path accepts them): the same numbers, one-hot vectors
    floats = mod.loss_and_grad(params, xs.astype(jnp.float64), ys, state, **kw)
    close(floats[0], dense[0], what="loss (float ids)")
    for k in params:
        close(floats[1][k], dense[1][k], what=f"d/d {k} (float ids)")
    # the training step runs the token path; the same update from the dense gradients
    opt = mod.init_opt_state(params)
    new, _, _, metrics = mod.train_step(params, opt, xs, ys, state, **kw)
    close(metrics["loss"], dense[0], what="train_step loss")
    ref, _ = mod.apply_updates(params, dense[1], opt, mod.UPDATER, mod.SCHEDULE)
    for k in params:
        close(new[k], ref[k], what=f"updated {k}")


FM_CASES = {
    **VJP_CASES,
    **{f"tokens_{k}": v for k, v in LAZY_CASES.items()},
    # concat of states, clip, a parameter vector (read as a column), division; and
    # overlapping slices (their adjoints are pads), both as custom cells
    "odd_split": (
        "cell odd(x) {\n  state h, c[2]\n  param s[3]\n  param W[hidden, X]\n"
        "  a = [h, c]\n  u = tanh(W @ x + U @ a + b)\n  q = u[0:2] / (1.5 + softplus(V @ h))\n"
        "  h' = clip(-u * s + exp(0.1 * h), -2.0, 2.0)\n  c' = q - c * 0.5\n}\n"
        "cell split(x) {\n  state h\n  param W[5, X]\n  z = W @ x + U @ h\n  p = z[0:2]\n"
        "  r = z[3:5]\n  h' = tanh([p, r] + W2 @ z[1:4])\n}\n"
        "model m {\n  input dense(features: 4)\n  layer odd(hidden: 3)\n"
        "  layer split(hidden: 4)\n  head linear(at: last, size: 2)\n}\n",
        True,
    ),
    # gated feedback: the global reset gates broadcast over a layer's features (expand)
    "gated_feedback": (
        "model g {\n  input onehot(vocab: 4)\n  layer elman(hidden: 3)\n"
        "  layer elman(hidden: 3)\n  stack gated_feedback\n"
        "  head softmax(at: per_step, classes: 4)\n}\n",
        True,
    ),
}


@pytest.mark.parametrize("case", list(FM_CASES))
def test_feature_major_loops_match_batch_major(case, tmp_dir):
    """The custom VJP's feature-major step functions ((n, B) values in both loops, the
    backward's transposed weights made outside the loop, token ids gathered as columns)
    give the batch-major module's loss, gradients and final state, with and without input
    gradients; FEATURE_MAJOR picks them per platform."""
    text, masks = FM_CASES[case]
    dense_in = "dense(" in text
    n_out = 2 if "linear" in text else 4
    fm = load(emit(text, 4, n_out, layout="feature"), tmp_dir)
    bm = load(emit(text, 4, n_out, layout="batch"), tmp_dir)
    entries = [c["vjp"].get("feature_major") for c in fm.CELLS.values() if c["vjp"]]
    assert entries and all(entries) and fm.FEATURE_MAJOR["cpu"]
    assert not any(c["vjp"].get("feature_major") for c in bm.CELLS.values() if c["vjp"])
    rng = np.random.default_rng(11)
    B, T = 5, 6  # a batch unlike every feature size: a missed transpose cannot broadcast
    xs = rng.normal(size=(B, T, 4)) if dense_in else rng.integers(0, 4, (B, T))
    if not dense_in:
        xs[0, 1], xs[1, 2], xs[2, 3] = -1, 4, 6  # outside the vocabulary: zero vectors
        xs = jnp.asarray(xs)  # (a NumPy xs is checked on the host: out of range is refused)
    ys = rng.normal(size=(B, 2)) if n_out == 2 else rng.integers(0, 4, (B, T))
    params = fm.init_params(4, "float64")
    state = {k: jnp.asarray(rng.normal(size=(B,) + v)) for k, v in fm.STATE_SHAPES.items()}
    kw = dict(lengths=np.array([T, 2, 5, 1, 4]), resets=rng.random((B, T)) < 0.2) if masks else {}
    if "dropout" in text:
        kw["rng"] = jax.random.PRNGKey(7)
    for wrt_inputs in (False, True):
        a = fm.loss_and_grad(params, xs, ys, state, wrt_inputs=wrt_inputs, **kw)
        b = bm.loss_and_grad(params, xs, ys, state, wrt_inputs=wrt_inputs, **kw)
        close_results(a, b, what=f" (wrt_inputs={wrt_inputs})")
    # forward (inference) runs the feature-major step as a plain scan: the same outputs,
    # and JAX's forward-mode autodiff still goes through it
    kw.pop("rng", None)
    close(fm.forward(params, xs, state, **kw)[0], bm.forward(params, xs, state, **kw)[0],
          what="forward")
    if masks:
        tangent = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) * 0.01, params)
        jvps = [
            jax.jvp(lambda p, m=m: m.forward(p, xs, state, **kw)[0], (params,), (tangent,))[1]
            for m in (fm, bm)
        ]
        close(jvps[0], jvps[1], what="jvp of forward")


@pytest.mark.parametrize(
    ("layer", "emitted", "train"),
    [("lstm(hidden: 512)", True, 32), ("gru(hidden: 512)", True, 32),
     ("mgu(hidden: 512)", True, 16), ("lstm(hidden: 256)", False, 0)],
)
def test_feature_major_is_chosen_for_wide_recurrent_products(
    layer, emitted, train, tmp_dir, monkeypatch
):
    """layout="auto" emits the feature-major pair where fm_max_batch says it pays: for
    forward from a 512 x 512 recurrent product on at any batch size, for the training
    objectives up to B = 32 with >= 1024 outputs from >= 512 inputs, up to B = 16 with
    512 x 512 (measured on CPU, docs/performance.md). A batch above the limit trains
    batch-major, with the same numbers."""
    text = tbptt_spec(3, 3, layers=1).replace("lstm(hidden: 3)", layer).replace(
        "  bptt k1 3 k2 3\n", "")
    source = emit(text, 4, 4)
    assert ('"feature_major": {' in source) == emitted
    assert ("_step_fm(" in source) == emitted
    assert "FEATURE_MAJOR = " in source  # the constant is always there, to flip by hand
    if not emitted:
        return
    assert f'"train_max_batch": {train},' in source
    import jax

    mod = load(source, tmp_dir)
    # the choice made where FEATURE_MAJOR asks for the pair (CPU; on a GPU host too)
    monkeypatch.setitem(mod.FEATURE_MAJOR, jax.default_backend(), True)
    (v,) = [c["vjp"] for c in mod.CELLS.values()]
    for batch in (1, train, train + 1, 4096):
        assert mod._feature_major(v, batch, training=False) is v["feature_major"]
        assert (mod._feature_major(v, batch) is not None) == (0 < batch <= train)
    # which loops run, seen from the step functions traced: feature-major up to the limit
    traced = []
    for key in ("step", "backward_step"):
        fn = v["feature_major"][key]
        v["feature_major"][key] = lambda *a, fn=fn, key=key: traced.append(key) or fn(*a)
    bm = load(emit(text, 4, 4, layout="batch"), tmp_dir)
    params = mod.init_params(1, "float64")
    for batch in sorted({2, train, train + 1}):
        traced.clear()
        xs = np.random.default_rng(batch).integers(0, 4, (batch, 3))
        close(mod.forward(params, xs)[0], bm.forward(params, xs)[0], what="forward")
        assert traced == ["step"]
        traced.clear()
        close_results(mod.loss_and_grad(params, xs, xs), bm.loss_and_grad(params, xs, xs))
        assert traced == (["step", "backward_step"] if batch <= train else []), batch


@pytest.mark.parametrize("cpu_asks", [True, False])
def test_loop_layout_follows_the_platform_the_arrays_are_on(cpu_asks, tmp_dir, monkeypatch):
    """The layout was chosen from jax.default_backend() while tracing: on a GPU host, a
    train step on CPU-committed parameters ran the GPU's choice. Now it is the platform
    the program is lowered for (jax.lax.platform_dependent), here a CPU on a host made to
    look like a GPU one (the default backend "gpu", a CUDA backend besides the CPU): the
    CPU's choice, in forward, loss_and_grad and train_step, with the same numbers."""
    import re

    import jax

    text = tbptt_spec(3, 3, layers=1).replace("lstm(hidden: 3)", "lstm(hidden: 512)").replace(
        "  bptt k1 3 k2 3\n", "")
    # a fresh module: jit keeps a trace (and the choice made in it) per function
    mod = import_source(emit(text, 4, 4), tmp_dir, "rnnc_jax_platform")
    bm = load(emit(text, 4, 4, layout="batch"), tmp_dir)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(mod, "_platforms", lambda: frozenset({"cpu", "gpu"}))
    monkeypatch.setitem(mod.FEATURE_MAJOR, "cpu", cpu_asks)
    monkeypatch.setitem(mod.FEATURE_MAJOR, "gpu", not cpu_asks)
    params = jax.device_put(mod.init_params(1, "float64"), jax.devices("cpu")[0])
    xs = np.random.default_rng(0).integers(0, 4, (2, 3))

    def lowered(fn, *args):
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        return bool(re.search(r"feature_major_loops", hlo))

    assert lowered(lambda p: mod.forward(p, xs), params) == cpu_asks
    assert lowered(lambda p: mod.loss_and_grad(p, xs, xs), params) == cpu_asks
    opt = mod.init_opt_state(params)
    assert lowered(lambda p, o: mod.train_step(p, o, xs, xs)[:2], params, opt) == cpu_asks
    close(mod.forward(params, xs)[0], bm.forward(params, xs)[0], what="forward")
    close_results(mod.loss_and_grad(params, xs, xs), bm.loss_and_grad(params, xs, xs))
    got, want = mod.train_step(params, opt, xs, xs), bm.train_step(params, opt, xs, xs)
    for k in want[0]:
        close(got[0][k], want[0][k], what=f"train_step {k}")


def test_token_ids_need_a_one_hot_input_read_through_matmuls(tmp_dir):
    """Dense and embedding inputs keep their arrays (no lazy types in the module), and so
    does a one-hot input that the first cell's hoisted section reads other than as W x."""
    dense_in = LAZY_CASES["bidirectional_residual"][0].replace(
        "onehot(vocab: 4)", "dense(features: 4)"
    )
    embedded = LAZY_CASES["bidirectional_residual"][0].replace(
        "onehot(vocab: 4)", "embedding(vocab: 4, dim: 4)"
    )
    squares_x = (
        "cell sq(x) {\n  state h[4]\n  h' = tanh(U @ h + W @ (x * x))\n}\n"
        "model m {\n  input onehot(vocab: 4)\n  layer sq(hidden: 4)\n"
        "  head softmax(at: per_step, classes: 4)\n}\n"
    )
    for text in (dense_in, embedded, squares_x):
        source = emit(text, 4, 4)
        assert "class _Tokens" not in source and "_LAZY = ()" in source
        mod = load(source, tmp_dir)
        assert mod._encode_for_training is mod._encode
    from rnnc.backends.jax.emitter import lazy_tokens_ok

    program = build(parse_spec(LAZY_CASES["tbptt_cut_mgu"][0], "m.rnn"), Sizes(4, 4))
    assert lazy_tokens_ok(program.model)


def test_embedding_reads_ids_outside_the_vocabulary_as_zero_vectors(tmp_dir):
    """docs/generated-module.md: the JAX module cannot refuse token ids outside 0 .. V-1
    in a jax.Array (it would have to copy it to the host, or look at traced values) and
    reads them as zero vectors. An embedding input does so too, rather than clamping V to
    the last row or wrapping -1 onto it; its gradient skips them. (A NumPy xs is checked
    on the host and refused.)"""
    text = LAZY_CASES["bidirectional_residual"][0].replace(
        "onehot(vocab: 4)", "embedding(vocab: 4, dim: 4)"
    )
    mod = load(emit(text, 4, 4), tmp_dir)
    params = mod.init_params(3, "float64")
    ids = np.array([[4, -1, 3], [0, 9, -5]])
    enc = np.asarray(mod._encode(params, ids, jnp.float64))  # time-major (T, B, 4)
    E, zero = np.asarray(params["input.E"]), np.zeros(4)
    np.testing.assert_array_equal(enc[:, 0], np.stack([zero, zero, E[3]]))
    np.testing.assert_array_equal(enc[:, 1], np.stack([E[0], zero, zero]))
    # the same model over a vocabulary of 5 whose zero row 4 stands in for the outside ids
    # (a module refuses an input.E of another shape than its own)
    wider = load(emit(text.replace("vocab: 4", "vocab: 5"), 5, 4), tmp_dir)
    zeroed = dict(params, **{"input.E": np.concatenate([E, np.zeros((1, 4))])})
    inside = np.where((ids < 0) | (ids >= 4), 4, ids)
    with pytest.raises(ValueError, match=r"xs: token ids must be in 0\.\.3, got values in -5\.\.9"):
        mod.forward(params, ids)
    ids = jnp.asarray(ids)
    close(mod.forward(params, ids)[0], wider.forward(zeroed, inside)[0], what="forward")
    _, grads, _ = mod.loss_and_grad(params, ids, np.zeros((2, 3), int))
    _, ref, _ = wider.loss_and_grad(zeroed, inside, np.zeros((2, 3), int))
    close(grads["input.E"], np.asarray(ref["input.E"])[:4], what="d/d input.E")
    # ids as floats: one ValueError (a one-hot input takes them, a table lookup cannot)
    with pytest.raises(ValueError, match=r"xs: token ids must be integers, got dtype float"):
        mod.forward(params, ids.astype(float))


def test_forward_stays_differentiable_in_every_mode(tmp_dir):
    """forward runs the plain scan (jax.jvp and jax.hessian work through it); only the
    training objective takes the custom VJP, which supports reverse mode alone."""
    text = VJP_CASES["bidirectional_peephole"][0].replace("hidden: 3", "hidden: 2")
    mod = load(emit(text, 4, 2), tmp_dir)
    params = mod.init_params(4, "float64")
    xs = jnp.asarray(np.random.default_rng(9).normal(size=(2, 5, 4)))

    def out(xs):
        return jnp.sum(mod.forward(params, xs)[0] ** 2)

    tangent = jnp.ones_like(xs)
    _, jvp = jax.jvp(out, (xs,), (tangent,))
    close(jvp, jnp.sum(jax.grad(out)(xs) * tangent), what="jvp vs grad")
    assert jax.hessian(out)(xs).shape == xs.shape * 2
    assert not mod._VJP_SEQUENCES
    mod.loss_and_grad(params, xs, np.zeros((2, 2)))
    assert mod._VJP_SEQUENCES


def test_vjp_cells_compute_cheap_hoisted_values_in_the_step():
    """The VJP's step adds the fused biases to x_proj and slices it itself
    (sink_cheap_hoisted); the matmul over every step stays hoisted, and nothing a hoisted
    matmul reads moves."""
    from rnnc.backends.jax.vjpgen import sink_cheap_hoisted

    text = tbptt_spec(3, 3, layers=1).split("train")[0]
    program = build(parse_spec(text, "case.rnn"), Sizes(4, 4))
    cell = program.model.layers[0].cell
    assert {i.op for i in cell.hoisted} == {"matmul", "slice", "add"}
    sunk = sink_cheap_hoisted(cell)
    assert [i.op for i in sunk.hoisted] == ["matmul"]
    assert [i.op for i in sunk.body[:5]] == ["add"] + ["slice"] * 4
    assert {i.name for i in sunk.instrs} == {i.name for i in cell.instrs}
    # the gate adjoints are concatenated once per step and exported once: the input
    # projection (now in the step) and the state projection share d_h_proj
    from rnnc.ir.passes.autodiff import autodiff, verify_grad

    grad = verify_grad(autodiff(sunk))
    assert grad.exports == ("d_h_proj",)
    assert [i.op for i in grad.body].count("concat") == 1
    # a hoisted value read by a hoisted matmul stays hoisted
    mat = next(i for i in cell.hoisted if i.op == "matmul")
    scaled = type(mat)("xs2", "mul", (mat.args[1], mat.args[1]), (4,), True)
    proj = type(mat)("p2", "matmul", (mat.args[0], "xs2"), mat.shape, True)
    odd = cell.with_sections(hoisted=(scaled, proj, *cell.hoisted))
    assert [i.name for i in sink_cheap_hoisted(odd).hoisted][:2] == ["xs2", "p2"]


def test_vjp_recomputes_cheap_saved_values():
    """remat_cheap_saved: MGU's 1 - f and f * h are recomputed, not saved (f * h also over
    the stacks, for U_h's gradient); an LSTM's saved values are all activations: kept."""
    from rnnc.backends.jax.vjpgen import remat_cheap_saved
    from rnnc.ir.passes.autodiff import autodiff, verify_grad

    def grad_of(layer):
        text = f"model m {{\n  input onehot(vocab: 4)\n  layer {layer}\n  head softmax\n}}\n"
        cell = build(parse_spec(text, "case.rnn"), Sizes(4, 4)).model.layers[0].cell
        return verify_grad(autodiff(cell))

    mgu = grad_of("mgu(hidden: 3)")
    after = remat_cheap_saved(mgu)
    gone = set(mgu.saved + mgu.stacked) - set(after.saved + after.stacked)
    ops = {i.name: i.op for i in mgu.cell.body}
    assert gone and {ops[g] for g in gone} <= {"sub", "mul"}
    assert after.body[0].name in gone  # 1 - f, for the backward step
    assert any(i.name in gone for i in after.hoisted)  # f * h, for dU_h over the stacks
    lstm = grad_of("lstm(hidden: 3)")
    assert remat_cheap_saved(lstm) is lstm


def test_step_matches_forward(tmp_dir):
    mod = load(emit(tbptt_spec(3, 3).split("train")[0], 4, 4), tmp_dir)
    params = mod.init_params(0, "float64")
    xs = np.random.default_rng(7).integers(0, 4, (2, 5))
    probs, final = mod.forward(params, xs)
    state = mod.initial_state(2, "float64")
    for t in range(xs.shape[1]):
        y, state = mod.step(params, xs[:, t], state)
        close(y, probs[:, t], what=f"step {t}")
    for k in final:
        close(state[k], final[k], what=k)


def _step_inputs(mod, rng, b):
    inp = mod.MODEL["input"]
    if inp["kind"] == "dense":
        return rng.normal(size=(b, inp["size"]))
    return rng.integers(0, inp["vocab"], b).astype(np.int32)


def test_prepared_step_gives_the_step_results(tmp_dir):
    """step(prepare_step(params), ...) gives step(params, ...)'s outputs and states, for
    every spec in specs/ that can step (one-hot inputs as token ids, dense features,
    stacked, residual, gated-feedback and custom cells), for a first residual layer fed
    token ids, and for an embedding input."""
    from rnnc.compiler import compile_file

    specs = sorted(
        p for p in (ROOT / "specs").rglob("*")
        if p.suffix in (".rnn", ".yaml") and not {"lib", "data"} & set(p.parts)
    )
    residual = emit(
        "model m {\n  input onehot(vocab: 7)\n  layer lstm(hidden: 7, residual: true)\n"
        "  layer gru(hidden: 7)\n  head softmax per_step\n}\n", 7, 7
    )
    assert "x = y + _dense(x)" in residual
    # no spec in specs/ has an embedding input: step(prepare_step(params)) failed there
    # ("Triggering __jax_array__() during abstractification": input.E laid out as _Laid
    # and handed to jnp.take)
    embedding = emit(
        "model m {\n  input embedding(vocab: 7, dim: 4)\n  layer lstm(hidden: 5)\n"
        "  head softmax per_step\n}\n", 7, 7
    )
    assert '"input.E"' in embedding
    sources = [(path.stem, compile_file(path.relative_to(ROOT), "jax")) for path in specs]
    stepped = 0
    for name, source in sources + [("residual", residual), ("embedding", embedding)]:
        mod = load(source, tmp_dir)
        params = mod.init_params(3, "float64")
        try:
            mod.step(params, _step_inputs(mod, np.random.default_rng(0), 2))
        except NotImplementedError:  # a layer runs backward in time
            continue
        prepared = mod.prepare_step(params)
        rng = np.random.default_rng(1)
        a = b = mod.initial_state(2, "float64")
        for t in range(3):
            x = _step_inputs(mod, rng, 2)
            ya, a = mod.step(params, x, a)
            yb, b = mod.step(prepared, x, b)
            close(yb, ya, rtol=1e-12, what=f"{name} step {t}")
            for k in a:
                close(b[k], a[k], rtol=1e-12, what=f"{name} step {t} {k}")
        stepped += 1
    assert stepped > 30


def test_prepared_step_lays_out_no_weights_per_call(tmp_dir):
    """A jitted step reading the parameters as they are transposes and copies every
    matrix its products read, and rebuilds the fused gate weights, on every call (a
    character model at V = 5000 sampled at 4-9 ms a character, most of it copying the
    (4H, V) input and (V, H) head weights). Given prepare_step's result, the compiled
    step has only its products (a one-hot input read as the rows it picks)."""
    import re

    text = tbptt_spec(3, 3, layers=1).split("train")[0].replace("vocab: 4", "vocab: 40")
    mod = load(emit(text, 40, 40), tmp_dir)
    params = mod.init_params(0)
    x, state = np.array([3], np.int32), mod.initial_state(1)

    def ops(p):
        hlo = mod._step.lower(p, x, state).compile().as_text()
        return set(re.findall(r"= \S+ (transpose|copy|concatenate)\(", hlo))

    assert ops(params)  # what the plain step does on every call
    assert ops(mod.prepare_step(params)) == set()
    assert mod.prepare_step(params).params["head.W"] is not None


def test_train_step_with_optax(tmp_dir):
    optax = pytest.importorskip("optax")
    mod = load(emit(tbptt_spec(3, 3, layers=1).split("train")[0], 4, 4), tmp_dir)
    params = mod.init_params(0, "float64")
    xs = np.random.default_rng(8).integers(0, 4, (2, 7))
    opt = optax.sgd(0.1)
    new, opt_state, _, metrics = mod.train_step(
        params, mod.init_opt_state(params, opt), xs, xs, optimizer=opt
    )
    _, grads, _ = mod.loss_and_grad(params, xs, xs)
    for k in params:
        close(new[k], params[k] - 0.1 * grads[k], what=k)
    assert np.isnan(metrics["lr"])
    # without a train block the spec's updater is adam with its defaults
    assert mod.UPDATER == {"name": "adam"} and mod.TRAIN is None
    assert set(mod.init_opt_state(params)) == {"step"} | {f"{s}/{k}" for s in "mv" for k in params}


def test_train_step_defers_full_collections_and_picks_the_platform_step(tmp_dir, monkeypatch):
    """train_step holds generation-2 collections off while it traces (and restores the
    thresholds, also on an error or when already held), and runs the CPU-compiled step
    (XLA's LLVM backend at -O1) for parameters on the CPU."""
    import gc

    import jax

    mod = load(emit(tbptt_spec(3, 3, layers=1).split("train")[0], 4, 4), tmp_dir)
    params = jax.device_put(mod.init_params(0), jax.devices("cpu")[0])  # also on a GPU host
    xs = np.random.default_rng(3).integers(0, 4, (2, 5))
    assert mod._jitted_train_step(params, None) is mod._TRAIN_STEPS["cpu"]
    # NumPy arrays: the default device's
    default = "cpu" if jax.default_backend() == "cpu" else "other"
    assert mod._jitted_train_step({k: np.asarray(v) for k, v in params.items()}, None) is (
        mod._TRAIN_STEPS[default]
    )
    assert mod.CPU_COMPILER_OPTIONS == {"xla_backend_optimization_level": 1}
    # the -O1 step computes what the default-options step computes
    opt = mod.init_opt_state(params)
    a = mod.train_step(params, opt, xs, xs)
    b = mod._TRAIN_STEPS["other"](params, opt, xs, xs, None, None, None, None, None)
    for k in params:
        np.testing.assert_allclose(a[0][k], b[0][k], rtol=1e-6, atol=1e-7)

    # inside the caller's own jit (and scan over steps) train_step traces like any function
    @jax.jit
    def two_steps(params, opt):
        def one(carry, _):
            p, o = carry
            p, o, _, metrics = mod.train_step(p, o, xs, xs)
            return (p, o), metrics["loss"]

        return jax.lax.scan(one, (params, opt), None, length=2)

    (p2, _), losses = two_steps(params, opt)
    np.testing.assert_allclose(losses[0], a[3]["loss"], rtol=1e-6)
    ref = mod.train_step(a[0], a[1], xs, xs)
    np.testing.assert_allclose(losses[1], ref[3]["loss"], rtol=1e-5)

    before = gc.get_threshold()
    seen = []

    def fake(*args):
        seen.append(gc.get_threshold())
        if len(seen) == 2:
            raise RuntimeError("boom")
        return "done"

    monkeypatch.setitem(mod._TRAIN_STEPS, "cpu", fake)
    assert mod.train_step(params, opt, xs, xs) == "done"
    assert seen[0][:2] == before[:2] and seen[0][2] == mod._full_gc_deferred.HELD
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError, match="boom"):
        mod.train_step(params, opt, xs, xs)
    assert gc.get_threshold() == before
    # already held (a nested or concurrent call): left as it is, not restored early
    gc.set_threshold(before[0], before[1], mod._full_gc_deferred.HELD)
    try:
        seen.clear()
        mod.train_step(params, opt, xs, xs)
        assert gc.get_threshold()[2] == mod._full_gc_deferred.HELD
    finally:
        gc.set_threshold(*before)


# -------------------------------------------------------------------- the file

LIB_SPEC = """model lib {
  input embedding(vocab: 7, dim: 3)
  layer lstm(hidden: 3, peepholes: true) dropout 0.2
  layer gru(hidden: 3, direction: bidirectional, merge: sum)
  head softmax(at: last, classes: 2)
}
train {
  data reber
  updater rmsprop(lr: 0.01)
  clip norm 1.0 value 0.5
  l2 0.001
}
"""
# every layer forward in time (`merge` goes too: without two directions it is an error)
FORWARD_LIB_SPEC = LIB_SPEC.replace(", direction: bidirectional, merge: sum", "")


def test_generated_file_is_clean_deterministic_and_standalone(tmp_path):
    src = emit(LIB_SPEC, 7, 2, name="specs/lib_case.rnn")
    assert src == emit(LIB_SPEC, 7, 2, name="specs/lib_case.rnn")
    assert src.startswith("# Generated by rnnc ")
    assert "# spec_sha256: " in src.splitlines()[1] and "backend: jax" in src.splitlines()[1]
    assert "import rnnc" not in src and "from rnnc" not in src
    # exactly the imports docs/generated-module.md lists ("File"; jax.extend.backend was not)
    imported = set()
    for node in ast.parse(src).body:
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"functools", "gc", "jax", "jax.extend.backend", "jax.numpy",
                        "jax.sharding", "numpy"}, imported
    path = tmp_path / "lib_jax.py"
    path.write_text(src)
    ruff = shutil.which("ruff")
    if ruff:
        cfg = ["--config", str(ROOT / "pyproject.toml")]
        r = subprocess.run([ruff, "check", *cfg, str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(
            [ruff, "format", "--check", *cfg, str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr
    # import and run it where rnnc cannot be imported (isolated mode, -I: no cwd, no user
    # site; a meta-path finder refuses rnnc even if installed)
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rnnc' or name.startswith('rnnc.'):\n"
        "            raise ImportError('rnnc is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import numpy as np\n"
        "import lib_jax as m\n"
        "assert not any(k == 'rnnc' or k.startswith('rnnc.') for k in sys.modules)\n"
        "p = m.init_params(0)\n"
        "xs = np.array([[1, 2, 3], [4, 5, 6]])\n"
        "y, s = m.forward(p, xs, lengths=np.array([3, 2]))\n"
        "assert y.shape == (2, 2), y.shape\n"
        "print('ok', float(y.sum()))\n"
    )
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE}
    r = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_init_params_follow_the_contract(tmp_dir):
    mod = load(emit(LIB_SPEC, 7, 2), tmp_dir)
    params = mod.init_params(3, "float64")
    assert list(params) == list(mod.PARAM_SHAPES)
    assert list(params)[0] == "input.E"
    rng = np.random.default_rng(3)
    for name, shape in mod.PARAM_SHAPES.items():
        kind, args, fan_in, fan_out = mod.PARAM_INITS[name]
        if kind == "xavier_uniform":
            a = np.sqrt(6.0 / (fan_in + fan_out))
            want = rng.uniform(-a, a, size=shape)
        elif kind == "normal":
            want = rng.normal(0.0, args[0], size=shape)
        elif kind == "constant":
            want = np.full(shape, args[0])
        else:
            assert kind == "zeros", kind
            want = np.zeros(shape)
        np.testing.assert_array_equal(np.asarray(params[name]), want, err_msg=name)
    assert float(params["layer1.b_f"][0]) == 1.0  # forget-gate bias
    assert params["head.W"].dtype == jnp.float64
    assert mod.init_params(3)["head.W"].dtype == jnp.float32
    assert mod.initial_state(4)["layer2.fwd.h"].shape == (4, 3)


def test_orthogonal_init(tmp_dir):
    text = (
        "cell orth(x) {\n  state h\n  param U init orthogonal\n"
        "  param W init orthogonal\n  h' = tanh(W @ x + U @ h + b)\n}\n"
        "model o {\n  input dense(features: 5)\n  layer orth(hidden: 3)\n"
        "  head linear(at: per_step, size: 2)\n}\n"
    )
    mod = load(emit(text, 5, 2), tmp_dir)
    p = mod.init_params(0, "float64")
    U, W = np.asarray(p["layer1.U"]), np.asarray(p["layer1.W"])
    np.testing.assert_allclose(U @ U.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(W @ W.T, np.eye(3), atol=1e-12)  # (3, 5): orthonormal rows


def test_entry_points_are_jitted_and_import_is_lazy(tmp_path):
    src = emit(LIB_SPEC, 7, 2)
    (tmp_path / "m.py").write_text(src)
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import jax\n"
        "from jax._src import xla_bridge\n"
        "import m\n"
        "assert not xla_bridge._backends, 'importing the module started a backend'\n"
        "for f in (m._forward, m._loss_and_grad):  # (forward, loss_and_grad check ids first)\n"
        "    assert hasattr(f, 'lower'), f\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_step_needs_forward_layers(tmp_dir):
    text = (
        tbptt_spec(3, 3, layers=1)
        .split("train")[0]
        .replace("lstm(hidden: 3)", "lstm(hidden: 3, direction: backward)")
    )
    mod = load(emit(text, 4, 4), tmp_dir)
    with pytest.raises(NotImplementedError, match="forward"):
        mod.step(mod.init_params(0), np.zeros(2, int))


def test_compilation_cache_location(monkeypatch, tmp_path):
    from rnnc.backends.jax import cache

    monkeypatch.delenv("RNNC_JAX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache.cache_dir() == tmp_path / "xdg" / "rnnc" / "jax"
    assert cache.cache_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("RNNC_JAX_CACHE", str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(tmp_path / "given") == tmp_path / "given"
    for off in ("off", "OFF", "0", "none"):
        monkeypatch.setenv("RNNC_JAX_CACHE", off)
        assert cache.cache_dir() is None and cache.enable_compilation_cache() is None


def test_compilation_cache_that_cannot_be_written(monkeypatch, tmp_path):
    """RNNC_JAX_CACHE naming a file, or a folder under one, or one that cannot be written
    was a traceback from mkdir in every JAX command; an unwritable default location now
    means no cache, an unwritable chosen one one error."""
    import stat

    from rnnc.backends.jax import cache
    from rnnc.errors import BackendError

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    bad = [blocker, blocker / "sub"]
    if not os.access(locked, os.W_OK):  # root may write anywhere
        bad.append(locked)
    for where in bad:
        monkeypatch.setenv("RNNC_JAX_CACHE", str(where))
        with pytest.raises(BackendError, match="cannot be used") as err:
            cache.enable_compilation_cache()
        assert "RNNC_JAX_CACHE=off" in err.value.hint
        with pytest.raises(BackendError, match="cannot be used"):
            cache.enable_compilation_cache(where)
    monkeypatch.delenv("RNNC_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    if sys.platform.startswith("linux"):
        assert cache.enable_compilation_cache() is None
    assert blocker.read_text() == ""


def test_compilation_cache_stores_programs(tmp_path):
    script = (
        "import sys\n"
        "from rnnc.backends.jax.cache import enable_compilation_cache\n"
        "where = enable_compilation_cache(sys.argv[1])\n"
        "import jax, jax.numpy as jnp\n"
        "jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).block_until_ready()\n"
        "print(where)\n"
    )
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE}
    env.pop("RNNC_JAX_CACHE", None)
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "c")
    assert any(p.is_file() for p in (tmp_path / "c").rglob("*"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_params_and_initial_state_default_to_the_spec_dtype(dtype, tmp_dir):
    """The contract (docs/generated-module.md): `init_params(seed=0, dtype=DTYPE)`, DTYPE the
    spec's dtype, in both backends. The JAX module's default was the literal "float32", so a
    `dtype float64` spec's module made float32 parameters unless the caller said otherwise."""
    text = ("model m {\n  input dense(features: 2)\n  layer elman(hidden: 3)\n"
            f"  head linear last\n  dtype {dtype}\n}}\n")
    mod = load(emit(text, 2, 1), tmp_dir)
    assert mod.DTYPE == dtype
    assert all(v.dtype == dtype for v in mod.init_params().values())
    assert all(v.dtype == dtype for v in mod.initial_state(2).values())
    assert mod.init_params(0, "float32")["head.W"].dtype == "float32"


def test_entry_points_work_under_the_callers_vmap(tmp_dir):
    """docs/jax.md ("Inside your own transformations"): jax.vmap over a stacked parameter
    set (an ensemble) runs forward, step, loss_and_grad (its custom VJP too) and train_step
    as one call per member; over a leading axis of the inputs, forward per sequence."""
    mod = load(emit(FORWARD_LIB_SPEC, 7, 2), tmp_dir)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 7, (3, 5))
    ys = rng.integers(0, 2, 3)
    lengths = np.array([5, 2, 4])
    p0 = mod.init_params(0, "float64")
    p1 = mod.init_params(1, "float64")
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    opt = mod.init_opt_state(p0)
    ys_v, state_v = jax.vmap(lambda p: mod.forward(p, xs, None, lengths))(both)
    loss_v, grads_v, _ = jax.vmap(lambda p: mod.loss_and_grad(p, xs, ys, None, lengths))(both)
    y_t = jax.vmap(lambda p: mod.step(p, xs[:, 0])[0])(both)
    new_v = jax.vmap(lambda p: mod.train_step(p, opt, xs, ys, None, lengths)[0])(both)
    for i, p in enumerate((p0, p1)):
        ys_i, state_i = mod.forward(p, xs, None, lengths)
        close(ys_v[i], ys_i, what=f"forward {i}")
        for k in state_i:
            close(state_v[k][i], state_i[k], what=f"final state {i} {k}")
        loss, grads, _ = mod.loss_and_grad(p, xs, ys, None, lengths)
        close(loss_v[i], loss, what=f"loss {i}")
        for k in grads:
            close(grads_v[k][i], grads[k], what=f"grad {i} {k}")
        close(y_t[i], mod.step(p, xs[:, 0])[0], what=f"step {i}")
        new = mod.train_step(p, opt, xs, ys, None, lengths)[0]
        for k in new:
            close(new_v[k][i], new[k], what=f"train_step {i} {k}")
    one = jax.vmap(lambda x, n: mod.forward(p0, x[None], None, n[None])[0][0])(xs, lengths)
    close(one, mod.forward(p0, xs, None, lengths)[0], what="forward per sequence")


def test_module_docstring_lists_the_step_entry_points(tmp_dir):
    """help(module) lists the API; it left out prepare_step (docs/jax.md), and listed step
    for a model whose step() refuses to run (a layer runs backward in time)."""
    stepping = load(emit(FORWARD_LIB_SPEC, 7, 2), tmp_dir)
    assert "prepare_step" in " ".join(stepping.__doc__.split())
    assert hasattr(stepping, "prepare_step")
    refusing = load(emit(LIB_SPEC, 7, 2), tmp_dir)
    assert "prepare_step" not in refusing.__doc__ and not hasattr(refusing, "prepare_step")
    doc = " ".join(refusing.__doc__.split())
    assert "step (refused here: a layer runs backward in time)" in doc
