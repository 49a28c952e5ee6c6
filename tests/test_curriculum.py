"""The classic lessons' cells, written as a learner writes them from the papers, against
hand-written NumPy loops of the same equations (an independent oracle): the CIFG LSTM
(coupled input-forget gate, Greff et al. 2015), the Elman network with softsign (Glorot &
Bengio 2010), and a hand-written peephole LSTM in the text language against the library
cell with peepholes, parameter for parameter. Also: the forget-gate bias and Xavier
initialisation are what the language reference says."""

from __future__ import annotations

import numpy as np
import pytest

from rnnc.gradcheck import load_module, program_from_text, source_for


B, T, F, H = 3, 6, 4, 5


def module(text: str):
    return load_module(source_for(program_from_text(text)), "curriculum")


def model(layer: str, cells: str = "", head: int = H) -> str:
    return (f"{cells}\nmodel m {{\n  input dense(features: {F})\n  layer {layer}\n"
            f"  head linear(at: per_step, size: {head})\n}}\n")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lively(m, seed=0):
    """Parameters drawn wide enough that every gate and non-linearity is exercised."""
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-0.8, 0.8, size=v.shape) for k, v in m.init_params(seed=0).items()}


def head_of(p, hs):
    return hs @ p["head.W"].T + p["head.b"]


def test_cifg_lstm_against_its_equations():
    m = module(model(f"lstm(hidden: {H}, coupled: true)"))
    p = lively(m)
    assert not any(k.endswith(("W_i", "U_i", "b_i")) for k in p)  # no input gate at all
    xs = np.random.default_rng(1).normal(size=(B, T, F))
    ys, final = m.forward(p, xs)
    g = {k.split(".")[1]: v for k, v in p.items() if k.startswith("layer1.")}
    h, c, outs = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(T):
        x = xs[:, t]
        f = sigmoid(x @ g["W_f"].T + h @ g["U_f"].T + g["b_f"])
        i = 1.0 - f
        z = np.tanh(x @ g["W_g"].T + h @ g["U_g"].T + g["b_g"])
        c = f * c + i * z
        o = sigmoid(x @ g["W_o"].T + h @ g["U_o"].T + g["b_o"])
        h = o * np.tanh(c)
        outs.append(h)
    np.testing.assert_allclose(ys, head_of(p, np.stack(outs, 1)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(final["layer1.c"], c, rtol=0, atol=1e-12)


def test_softsign_elman_against_its_equations():
    cells = "cell ss(x) {\n  state h\n  h' = softsign(W @ x + U @ h + b)\n}\n"
    m = module(model(f"ss(hidden: {H})", cells))
    lib = module(model(f"elman(hidden: {H}, act: softsign)"))
    p = lively(m)
    xs = np.random.default_rng(2).normal(size=(B, T, F)) * 3
    h, outs = np.zeros((B, H)), []
    for t in range(T):
        z = xs[:, t] @ p["layer1.W"].T + h @ p["layer1.U"].T + p["layer1.b"]
        h = z / (1.0 + np.abs(z))
        outs.append(h)
    want = head_of(p, np.stack(outs, 1))
    np.testing.assert_allclose(m.forward(p, xs)[0], want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lib.forward(p, xs)[0], want, rtol=0, atol=1e-12)


PEEPHOLE_LSTM = """
cell my_lstm(x) {
  option forget_bias = 1.0
  state h, c
  param b_f init constant(forget_bias)
  i = sigmoid(W_i @ x + U_i @ h + p_i * c + b_i)
  f = sigmoid(W_f @ x + U_f @ h + p_f * c + b_f)
  g = tanh(W_g @ x + U_g @ h + b_g)
  c' = f * c + i * g
  o = sigmoid(W_o @ x + U_o @ h + p_o * c' + b_o)
  h' = o * tanh(c')
}
"""


def test_a_hand_written_peephole_lstm_is_the_library_cell():
    """Gers & Schmidhuber 2000 as the learner writes it (the output gate peeks at the new
    cell state) computes what lstm(peepholes: true) does, with the same parameters, and
    starts from the same forget bias."""
    mine = module(model(f"my_lstm(hidden: {H})", PEEPHOLE_LSTM))
    lib = module(model(f"lstm(hidden: {H}, peepholes: true)"))
    assert set(mine.PARAM_SHAPES) == set(lib.PARAM_SHAPES)
    np.testing.assert_array_equal(mine.init_params(seed=0)["layer1.b_f"], np.ones(H))
    np.testing.assert_array_equal(lib.init_params(seed=0)["layer1.b_f"], np.ones(H))
    p = lively(lib)
    xs = np.random.default_rng(3).normal(size=(B, T, F))
    ys, final = lib.forward(p, xs)
    ys2, final2 = mine.forward(p, xs)
    np.testing.assert_allclose(ys2, ys, rtol=0, atol=1e-12)
    for k in final:
        np.testing.assert_allclose(final2[k], final[k], rtol=0, atol=1e-12)
    _, grads, _ = lib.loss_and_grad(p, xs, np.zeros((B, T, H)))
    _, grads2, _ = mine.loss_and_grad(p, xs, np.zeros((B, T, H)))
    for k in grads:
        np.testing.assert_allclose(grads2[k], grads[k], rtol=0, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal"])
def test_xavier_variance_is_two_over_fan_in_plus_fan_out(init):
    """Glorot & Bengio 2010: Var(W) = 2 / (fan_in + fan_out) for W of shape (out, in),
    per gate (the fused gate matrices do not change the fans), and a uniform draw is
    bounded by sqrt(6 / (fan_in + fan_out))."""
    text = ("model m {\n  input dense(features: 300)\n"
            f"  layer lstm(hidden: 200, init: {{\"W_*\": {init}, \"U_*\": {init}}})\n"
            "  head linear(at: per_step, size: 1)\n}\n")
    p = module(text).init_params(seed=0)
    for name, (fan_out, fan_in) in {"layer1.W_i": (200, 300), "layer1.U_f": (200, 200)}.items():
        w = p[name]
        assert w.shape == (fan_out, fan_in)
        var = 2.0 / (fan_in + fan_out)
        assert w.var() == pytest.approx(var, rel=0.03), name
        assert abs(w.mean()) < 0.1 * np.sqrt(var)
        if init == "xavier_uniform":
            assert np.abs(w).max() <= np.sqrt(6.0 / (fan_in + fan_out))
            assert np.abs(w).max() > 0.99 * np.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_l1_l2_then_clipping_then_sgd_by_hand(backend):
    """docs/language.md: the penalty's gradient `l1 sign(p) + l2 p` is added to every
    non-bias parameter before global-norm clipping; the logged loss is the data loss
    alone and grad_norm is the norm before clipping. One SGD step by hand."""
    if backend == "jax":
        pytest.importorskip("jax")
        import jax

        jax.config.update("jax_enable_x64", True)
    text = model(f"lstm(hidden: {H})", head=2).replace("\n}", "\n  dtype float64\n}") + (
        'train {\n  data text(path: "x.txt")\n  updater sgd(lr: 0.5)\n  l1 0.01\n  l2 0.1\n'
        '  clip norm 0.05\n  dropout output 0.5\n}\n')
    m = load_module(source_for(program_from_text(text), backend), f"curriculum_{backend}")
    rng = np.random.default_rng(4)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in lively(m).items()}
    xs, ys = rng.normal(size=(B, T, F)), rng.normal(size=(B, T, 2))
    loss, g, _ = m.loss_and_grad(p, xs, ys)  # no rng: no dropout, as forward
    g = {k: np.asarray(v) for k, v in g.items()}
    np.testing.assert_allclose(
        np.mean((np.asarray(m.forward(p, xs)[0]) - ys) ** 2), float(loss), rtol=1e-12)
    def is_bias(k):
        return k.split(".")[-1] == "b" or k.split(".")[-1].startswith("b_")

    full = {k: g[k] + (0 if is_bias(k) else 0.01 * np.sign(p[k]) + 0.1 * p[k]) for k in g}
    norm = np.sqrt(sum(float(np.sum(v * v)) for v in full.values()))
    assert norm > 0.05  # the clip bites
    new, _, _, metrics = m.train_step(p, m.init_opt_state(p), xs, ys)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-12)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-10)
    scale = 0.05 / (norm + 1e-6)  # clip_grad_norm_'s factor: max_norm / (norm + 1e-6)
    for k in p:
        np.testing.assert_allclose(np.asarray(new[k]), p[k] - 0.5 * full[k] * scale,
                                   rtol=0, atol=1e-12, err_msg=k)
