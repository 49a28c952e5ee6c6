"""Truncated BPTT in generated NumPy modules (``bptt k1 k2``).

Windows as long as the sequence are exactly full BPTT; k1 = k2 = k is full BPTT
with the state detached every k steps, checked against two independent
references (the full-BPTT module called window by window, and a PyTorch loop
with ``.detach()``); overlapping windows (k2 > k1) keep the loss and the final
state of the untruncated model. Finite differences of the windowed objective
(rnnc.gradcheck) cover the rest in test_numpy_backend.py.
"""

import functools

import numpy as np
import pytest

from rnnc.gradcheck import load_module, program_from_text, source_for


B, T = 3, 10


def text(layers: str, bptt: str = "", head: str = "softmax per_step",
         inp: str = "onehot(vocab: 5)") -> str:
    body = "\n".join(f"  layer {la}" for la in layers.split(";"))
    out = f"model m {{\n  input {inp}\n{body}\n  head {head}\n}}\n"
    if bptt:
        out += f'train {{\n  data text(path: "x.txt")\n  bptt {bptt}\n}}\n'
    return out


@functools.cache
def module(spec: str):
    return load_module(source_for(program_from_text(spec, 5, 4)), "tbptt")


def data(seed=0, lengths=False):
    rng = np.random.default_rng(seed)
    xs, ys = rng.integers(0, 5, (B, T)), rng.integers(0, 4, (B, T))
    lens = np.array([T, 7, 4]) if lengths else None
    return xs, ys, lens


LAYERS = "lstm(hidden: 4); gru(hidden: 3)"


@pytest.mark.parametrize("bptt", ["k1 10", "k1 12 k2 15", "k1 3 k2 12", "k1 4 k2 12"])
def test_windows_covering_the_sequence_are_full_bptt(bptt):
    full, trunc = module(text(LAYERS)), module(text(LAYERS, bptt))
    params = full.init_params(0, "float64")
    xs, ys, lens = data(lengths=True)
    state = {k: np.full((B,) + v, 0.3) for k, v in full.STATE_SHAPES.items()}
    a = full.loss_and_grad(params, xs, ys, state, lens, wrt_inputs=True)
    b = trunc.loss_and_grad(params, xs, ys, state, lens, wrt_inputs=True)
    assert a[0] == b[0]
    exact = bptt.startswith(("k1 10", "k1 12"))  # one window: the same computation
    for k in a[1]:
        if exact:
            assert np.array_equal(a[1][k], b[1][k]), k
        else:  # every window reaches back to step 0: the same sum, another order
            np.testing.assert_allclose(a[1][k], b[1][k], rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_disjoint_windows_are_bptt_detached_every_k_steps(k, lengths):
    """Reference: the full-BPTT module run window by window, carrying the state (a
    constant) and weighting each window's mean loss by its share of the valid steps."""
    full, trunc = module(text(LAYERS)), module(text(LAYERS, f"k1 {k}"))
    params = full.init_params(1, "float64")
    xs, ys, lens = data(1, lengths)
    loss, grads, final = trunc.loss_and_grad(params, xs, ys, lengths=lens)
    n_total = B * T if lens is None else int(lens.sum())
    ref = {name: np.zeros_like(v) for name, v in params.items()}
    ref_loss, state = 0.0, None
    for s in range(0, T, k):
        e = min(s + k, T)
        w_lens = None if lens is None else np.clip(lens - s, 0, e - s)
        n_w = (e - s) * B if lens is None else int(w_lens.sum())
        if n_w:
            w_loss, w_grads, _ = full.loss_and_grad(params, xs[:, s:e], ys[:, s:e], state, w_lens)
            ref_loss += w_loss * n_w / n_total
            for name in ref:
                ref[name] += w_grads[name] * n_w / n_total
        _, state = full.forward(params, xs[:, s:e], state, w_lens)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ref:
        np.testing.assert_allclose(grads[name], ref[name], rtol=1e-10, atol=1e-14, err_msg=name)
    for name in final:
        np.testing.assert_allclose(final[name], state[name], rtol=1e-12)


def head_sse(tp, h, y):
    """A linear head's squared error at one step: mean over outputs, summed over rows."""
    pred = h @ tp["head.W"].T + tp["head.b"]
    return ((pred - h.new_tensor(y)) ** 2).mean(-1).sum()


def assert_matches_torch(loss, grads, total, tp):
    """loss and grads are the PyTorch objective total / (B T) and its parameter gradients
    (total.backward() fills tp's .grad)."""
    total = total / (B * T)
    total.backward()
    assert loss == pytest.approx(total.item(), rel=1e-12)
    for name, v in tp.items():
        np.testing.assert_allclose(grads[name], v.grad.numpy(), rtol=1e-10, atol=1e-14,
                                   err_msg=name)


def test_disjoint_windows_match_a_pytorch_loop_with_detach():
    torch = pytest.importorskip("torch")
    k, H = 3, 4
    m = module(text(f"lstm(hidden: {H})", f"k1 {k}", head="linear per_step",
                    inp="dense(features: 2)"))
    params = m.init_params(2, "float64")
    rng = np.random.default_rng(2)
    xs, ys = rng.normal(size=(B, T, 2)), rng.normal(size=(B, T, 4))
    loss, grads, _ = m.loss_and_grad(params, xs, ys)

    tp = {name: torch.tensor(v, requires_grad=True) for name, v in params.items()}
    h = torch.zeros(B, H, dtype=torch.float64)
    c = torch.zeros(B, H, dtype=torch.float64)
    total = 0.0
    for t in range(T):
        if t % k == 0:  # truncated BPTT: the state entering a window is a constant
            h, c = h.detach(), c.detach()
        x = torch.tensor(xs[:, t])

        def gate(g, act, x=x, h=h):
            return act(x @ tp[f"layer1.W_{g}"].T + h @ tp[f"layer1.U_{g}"].T
                       + tp[f"layer1.b_{g}"])

        f, i = gate("f", torch.sigmoid), gate("i", torch.sigmoid)
        g, o = gate("g", torch.tanh), gate("o", torch.sigmoid)
        c = f * c + i * g
        h = o * torch.tanh(c)
        total = total + head_sse(tp, h, ys[:, t])
    assert_matches_torch(loss, grads, total, tp)


@pytest.mark.parametrize("bptt", ["k1 3", "k1 2 k2 3", "k1 3 k2 7"])
def test_backward_direction_enters_each_window_at_its_end(bptt):
    """A layer running backward in time under truncated BPTT, against a PyTorch loop: the
    sequence runs once without gradients; window (s, lo, e) then reruns steps e-1 ... s
    from the (constant) state the later steps left, or from the call's initial state when
    e = T, and scores the losses at lo:e."""
    torch = pytest.importorskip("torch")
    H = 4
    m = module(text(f"elman(hidden: {H}, direction: backward)", bptt, head="linear per_step",
                    inp="dense(features: 2)"))
    params = m.init_params(3, "float64")
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(size=(B, T, 2)), rng.normal(size=(B, T, 4))
    h0 = rng.normal(size=(B, H))
    loss, grads, final = m.loss_and_grad(params, xs, ys, {"layer1.h": h0}, wrt_inputs=True)

    tp = {name: torch.tensor(v, requires_grad=True) for name, v in params.items()}
    th0 = torch.tensor(h0, requires_grad=True)

    def cell(t, h):
        x = torch.tensor(xs[:, t])
        return torch.tanh(x @ tp["layer1.W"].T + h @ tp["layer1.U"].T + tp["layer1.b"])

    with torch.no_grad():  # after[t]: the state after step t (which step t - 1 reads)
        after, h = [None] * T, th0
        for t in reversed(range(T)):
            after[t] = h = cell(t, h)
    k1, k2 = (int(v) for v in bptt.split()[1::2]) if "k2" in bptt else (int(bptt.split()[1]),) * 2
    total = 0.0
    for lo in range(0, T, k1):
        s, e = max(0, lo + k1 - k2), min(lo + k1, T)
        h = th0 if e == T else after[e].detach()
        for t in reversed(range(s, e)):
            h = cell(t, h)
            if t >= lo:
                total = total + head_sse(tp, h, ys[:, t])
    assert_matches_torch(loss, grads, total, tp)
    np.testing.assert_allclose(grads["state/layer1.h"], th0.grad.numpy(), rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_allclose(final["layer1.h"], after[0].numpy(), rtol=1e-12)


def test_overlapping_windows_keep_loss_and_final_state():
    full, trunc = module(text(LAYERS)), module(text(LAYERS, "k1 3 k2 5"))
    params = full.init_params(3, "float64")
    xs, ys, lens = data(3, lengths=True)
    a = full.loss_and_grad(params, xs, ys, lengths=lens)
    b = trunc.loss_and_grad(params, xs, ys, lengths=lens)
    assert a[0] == pytest.approx(b[0], rel=1e-14)
    for name in a[2]:
        np.testing.assert_array_equal(a[2][name], b[2][name])
    # truncation changes the gradient (k2 = 5 < T): not the full one, not disjoint k = 3
    disjoint = module(text(LAYERS, "k1 3")).loss_and_grad(params, xs, ys, lengths=lens)
    u = "layer1.U_f"
    assert not np.allclose(b[1][u], a[1][u]) and not np.allclose(b[1][u], disjoint[1][u])


def test_a_stream_of_calls_carries_the_state():
    m = module(text(LAYERS, "k1 3"))
    params = m.init_params(4, "float64")
    xs, ys, _ = data(4)
    out, final = m.forward(params, xs)
    _, _, s1 = m.loss_and_grad(params, xs[:, :6], ys[:, :6])
    out2, s2 = m.forward(params, xs[:, 6:], s1)
    np.testing.assert_allclose(out2, out[:, 6:], rtol=1e-12)
    for name in final:
        np.testing.assert_allclose(s2[name], final[name], rtol=1e-12)
