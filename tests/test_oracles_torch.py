"""Generated NumPy modules against PyTorch, an independent implementation.

PyTorch's nn.RNN / nn.LSTM / nn.GRU weights are mapped onto the spec's
parameters (PyTorch's two biases b_ih + b_hh become rnnc's one bias per gate;
GRU's b_hn stays b_hn). With a linear identity head the module's outputs are
the top layer's hidden states. In float64, outputs, final states and the
gradients of a fixed loss with respect to every parameter, the inputs and the
initial state must agree to 1e-9; so must one or two updates of each updater
after global-norm clipping (train_step against torch.optim).
"""

import functools

import numpy as np
import pytest

from rnnc.gradcheck import load_module, program_from_text, source_for


torch = pytest.importorskip("torch")

B, T, F, H = 3, 5, 4, 3
TOL = 1e-9
GATES = {"lstm": "ifgo", "gru": "rzn", "rnn": "h"}


@functools.cache
def module(text: str):
    return load_module(source_for(program_from_text(text)), "oracle")


def spec(cell: str, layers: int, bidirectional: bool, head: int, train: str = "") -> str:
    """``cell`` is the layer's call, e.g. ``lstm(hidden: 3)``."""
    direction = " direction bidirectional" if bidirectional else ""
    body = "\n".join(f"  layer {cell}{direction}" for _ in range(layers))
    text = (f"model m {{\n  input dense(features: {F})\n{body}\n"
            f"  head linear(at: per_step, size: {head})\n}}\n")
    if train:
        text += f'train {{\n  data text(path: "x.txt")\n  {train}\n}}\n'
    return text


def torch_rnn(kind: str, layers: int, bidirectional: bool, act: str = "tanh",
              bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    kw = {"nonlinearity": act} if kind == "rnn" else {}
    rnn = cls(F, H, num_layers=layers, bidirectional=bidirectional, batch_first=True,
              bias=bias, **kw).double()
    with torch.no_grad():  # livelier than the default U(-1/sqrt(H), 1/sqrt(H))
        for p in rnn.parameters():
            p.uniform_(-0.6, 0.6)
    return rnn


def mapping(rnn, kind: str, layers: int, bidirectional: bool):
    """[(rnnc name, torch tensor, row slice or None, bias partner or None)]."""
    out = []
    dirs = ["fwd", "bwd"] if bidirectional else ["fwd"]
    for layer in range(layers):
        for d, direction in enumerate(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            pre = f"layer{layer + 1}." + (f"{direction}." if bidirectional else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b_ih = getattr(rnn, "bias_ih" + sfx, None)
            b_hh = getattr(rnn, "bias_hh" + sfx, None)
            for j, g in enumerate(GATES[kind]):
                rows = slice(j * H, (j + 1) * H)
                sym = "" if kind == "rnn" else "_" + g
                out.append((pre + "W" + sym, w_ih, rows, None))
                out.append((pre + "U" + sym, w_hh, rows, None))
                if b_ih is None:
                    continue
                if kind == "gru" and g == "n":
                    out.append((pre + "b_n", b_ih, rows, None))
                    out.append((pre + "b_hn", b_hh, rows, None))
                else:
                    out.append((pre + "b" + sym, b_ih, rows, b_hh))
    return out


def rnnc_params(m, rnn, kind, layers, bidirectional, head_w=None, head_b=None):
    params = {}
    for name, tensor, rows, partner in mapping(rnn, kind, layers, bidirectional):
        value = tensor.detach().numpy()[rows].copy()
        if partner is not None:
            value = value + partner.detach().numpy()[rows]
        params[name] = value
    width = H * (2 if bidirectional else 1)
    params["head.W"] = np.eye(width) if head_w is None else head_w.detach().numpy().copy()
    params["head.b"] = np.zeros(width) if head_b is None else head_b.detach().numpy().copy()
    assert set(params) == set(m.PARAM_SHAPES)
    return params


def rnnc_state(kind, layers, bidirectional, h0, c0):
    dirs = ["fwd", "bwd"] if bidirectional else ["fwd"]
    state = {}
    for layer in range(layers):
        for d, direction in enumerate(dirs):
            pre = f"layer{layer + 1}." + (f"{direction}." if bidirectional else "")
            i = layer * len(dirs) + d
            state[pre + "h"] = h0[i].detach().numpy().copy()
            if kind == "lstm":
                state[pre + "c"] = c0[i].detach().numpy().copy()
    return state


CASES = [
    ("rnn", 1, False, "tanh"),
    ("rnn", 2, False, "relu"),
    ("lstm", 1, False, "tanh"),
    ("lstm", 2, False, "tanh"),
    ("lstm", 2, True, "tanh"),
    ("gru", 1, False, "tanh"),
    ("gru", 2, True, "tanh"),
]


@pytest.mark.parametrize(("kind", "layers", "bidirectional", "act"), CASES,
                         ids=[f"{k}{n}{'-bi' if b else ''}-{a}" for k, n, b, a in CASES])
def test_forward_and_gradients_match_pytorch(kind, layers, bidirectional, act):
    cell = {"rnn": f"elman(hidden: {H}, act: {act})", "lstm": f"lstm(hidden: {H})",
            "gru": f"gru(hidden: {H})"}[kind]
    width = H * (2 if bidirectional else 1)
    m = module(spec(cell, layers, bidirectional, width))
    rnn = torch_rnn(kind, layers, bidirectional, act)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(B, T, F)), requires_grad=True)
    n_states = layers * (2 if bidirectional else 1)
    h0 = torch.tensor(rng.normal(size=(n_states, B, H)) * 0.5, requires_grad=True)
    c0 = torch.tensor(rng.normal(size=(n_states, B, H)) * 0.5, requires_grad=True)
    target = rng.normal(size=(B, T, width))
    out, fin = rnn(x, (h0, c0) if kind == "lstm" else h0)
    loss = ((out - torch.tensor(target)) ** 2).mean()
    loss.backward()

    params = rnnc_params(m, rnn, kind, layers, bidirectional)
    state = rnnc_state(kind, layers, bidirectional, h0, c0)
    xs = x.detach().numpy()
    ys, final = m.forward(params, xs, state)
    np.testing.assert_allclose(ys, out.detach().numpy(), rtol=0, atol=TOL)
    ref_final = rnnc_state(kind, layers, bidirectional, *(fin if kind == "lstm" else (fin, fin)))
    for k, v in ref_final.items():
        np.testing.assert_allclose(final[k], v, rtol=0, atol=TOL)

    got_loss, grads, _ = m.loss_and_grad(params, xs, target, state, wrt_inputs=True)
    assert got_loss == pytest.approx(loss.item(), rel=1e-12)
    checked = set()
    for name, tensor, rows, _ in mapping(rnn, kind, layers, bidirectional):
        np.testing.assert_allclose(grads[name], tensor.grad.numpy()[rows], rtol=0, atol=TOL,
                                   err_msg=name)
        checked.add(name)
    assert checked == set(m.PARAM_SHAPES) - {"head.W", "head.b"}
    np.testing.assert_allclose(grads["xs"], x.grad.numpy(), rtol=0, atol=TOL)
    ref = rnnc_state(kind, layers, bidirectional, h0.grad, c0.grad)
    for k, v in ref.items():
        np.testing.assert_allclose(grads["state/" + k], v, rtol=0, atol=TOL, err_msg=k)


UPDATERS = [
    ("nesterov(lr: 0.1, momentum: 0.9)",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    ("adagrad(lr: 0.1)", lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10)),
    ("rmsprop(lr: 0.01, decay: 0.95)",
     lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.95, eps=1e-8)),
    ("adam(lr: 0.01)", lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
]


@pytest.mark.parametrize(("updater", "make"), UPDATERS, ids=[u.split("(")[0] for u, _ in UPDATERS])
def test_train_step_matches_torch_optim(updater, make):
    """Two updates after global-norm clipping (the norm is small enough to bite)."""
    out_size = 2
    text = spec(f"lstm(hidden: {H}, bias: false)", 1, False, out_size,
                train=f"updater {updater}\n  clip norm 0.05")
    m = module(text)
    rnn = torch_rnn("lstm", 1, False, bias=False)
    head = torch.nn.Linear(H, out_size).double()
    params = rnnc_params(m, rnn, "lstm", 1, False, head.weight, head.bias)
    tparams = list(rnn.parameters()) + list(head.parameters())
    opt = make(tparams)
    rng = np.random.default_rng(1)
    xs, ys = rng.normal(size=(B, T, F)), rng.normal(size=(B, T, out_size))
    opt_state = m.init_opt_state(params)
    for _ in range(2):
        opt.zero_grad()
        out, _ = rnn(torch.tensor(xs))
        loss = ((head(out) - torch.tensor(ys)) ** 2).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(tparams, 0.05)
        opt.step()
        params, opt_state, _, metrics = m.train_step(params, opt_state, xs, ys)
        assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-12)
        assert metrics["grad_norm"] == pytest.approx(norm.item(), rel=1e-10)
    ref = rnnc_params(m, rnn, "lstm", 1, False, head.weight, head.bias)
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=0, atol=TOL, err_msg=k)
