"""Unscored targets: a class id -1 in `ys` of a softmax head adds nothing to the loss or
its gradients, and the mean is over the scored steps only (docs/generated-module.md,
"Head and loss"). The references are independent of the feature: the same batch with
the unscored steps cut off by `lengths` (trailing steps) or its unscored rows left out
(a last head), finite differences of an objective that skips them (rnnc.gradcheck),
and the other backend.
"""

import functools

import numpy as np
import pytest

from rnnc.gradcheck import gradcheck, load_module, program_from_text, source_for


def _backends():
    out = ["numpy"]
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        out.append("jax")
    except ImportError:
        pass
    return out


BACKENDS = _backends()
V, C, B, T = 5, 4, 3, 9


def spec(head: str = "per_step", bptt: str = "", layers: str = "lstm(hidden: 4)") -> str:
    body = "\n".join(f"  layer {la}" for la in layers.split(";"))
    out = f"model m {{\n  input onehot(vocab: {V})\n{body}\n  head softmax {head}\n}}\n"
    if bptt:
        out += f'train {{\n  data text(path: "x.txt")\n  bptt {bptt}\n}}\n'
    return out


@functools.cache
def module(text: str, backend: str):
    return load_module(source_for(program_from_text(text, V, C), backend), f"unscored_{backend}")


def batch(seed: int = 0, head: str = "per_step"):
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, V, (B, T)).astype(np.int32)
    ys = rng.integers(0, C, (B, T) if head == "per_step" else (B,)).astype(np.int32)
    return xs, ys


def as_np(out):
    loss, grads, final = out
    return (float(loss), {k: np.asarray(v, dtype=np.float64) for k, v in grads.items()},
            {k: np.asarray(v, dtype=np.float64) for k, v in final.items()})


def assert_same(a, b, tol=1e-12):
    assert a[0] == pytest.approx(b[0], rel=tol, abs=tol)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        np.testing.assert_allclose(a[1][k], b[1][k], rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bptt", ["", "k1 3", "k1 2 k2 5"])
def test_trailing_unscored_steps_are_steps_cut_off_by_lengths(backend, bptt):
    """-1 on each row's last steps: the loss and gradients of the same rows shortened
    by `lengths` (which the contract already defines)."""
    m = module(spec(bptt=bptt, layers="lstm(hidden: 4); gru(hidden: 3)"), backend)
    params = m.init_params(0, "float64")
    xs, ys = batch(1)
    lengths = np.array([T, 6, 2], dtype=np.int32)
    cut = ys.copy()
    cut[np.arange(T)[None, :] >= lengths[:, None]] = -1
    state = {k: np.full((B,) + v, 0.2) for k, v in m.STATE_SHAPES.items()}
    got = as_np(m.loss_and_grad(params, xs, cut, state))
    want = as_np(m.loss_and_grad(params, xs, ys, state, lengths))
    assert_same(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bptt", ["", "k1 4 k2 6"])
def test_an_unscored_row_of_a_last_head_is_a_row_left_out(backend, bptt):
    m = module(spec("last", bptt), backend)
    params = m.init_params(2, "float64")
    xs, ys = batch(2, "last")
    ys_cut = ys.copy()
    ys_cut[1] = -1
    got = as_np(m.loss_and_grad(params, xs, ys_cut))
    keep = [0, 2]
    want = as_np(m.loss_and_grad(params, xs[keep], ys[keep]))
    assert_same(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head,bptt", [("per_step", ""), ("per_step", "k1 2 k2 5"),
                                       ("per_step", "k1 3"), ("last", ""),
                                       ("last", "k1 2 k2 5")])
def test_no_scored_target_is_loss_zero_and_zero_gradients(backend, head, bptt):
    m = module(spec(head, bptt), backend)
    params = m.init_params(0, "float64")
    xs, ys = batch(0, head)
    loss, grads, final = as_np(m.loss_and_grad(params, xs, np.full_like(ys, -1),
                                               lengths=np.array([T, 4, 0], dtype=np.int32)))
    assert loss == 0.0
    for k, g in grads.items():
        assert np.all(g == 0.0), k
    # the state still runs: the same final state as a forward pass
    _, want = m.forward(params, xs, None, np.array([T, 4, 0], dtype=np.int32))
    for k in final:
        np.testing.assert_allclose(final[k], np.asarray(want[k]), rtol=1e-12, atol=1e-14)
    opt = m.init_opt_state(params)
    new, _, _, metrics = m.train_step(params, opt, xs, np.full_like(ys, -1))
    assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
    assert all(np.all(np.isfinite(np.asarray(v))) for v in new.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head,bptt,resets", [("per_step", "", False),
                                              ("per_step", "k1 2 k2 5", True),
                                              ("per_step", "k1 3", True),
                                              ("last", "k1 2 k2 4", False)])
def test_gradcheck_with_unscored_targets(backend, head, bptt, resets):
    """Finite differences of an objective that skips the -1 targets (rnnc.gradcheck)."""
    m = module(spec(head, bptt, "lstm(hidden: 4); elman(hidden: 3)"), backend)
    report = gradcheck(m, seed=3, T=8, B=4, resets=resets, unscored=0.4)
    worst = max(err for _, err in report)
    assert worst < 1e-6, report


@pytest.mark.parametrize("head,bptt", [("per_step", "k1 2 k2 5"), ("per_step", ""),
                                       ("last", "k1 3 k2 4")])
def test_the_backends_agree_on_unscored_targets(head, bptt):
    if "jax" not in BACKENDS:
        pytest.skip("jax is not installed")
    a, b = module(spec(head, bptt), "numpy"), module(spec(head, bptt), "jax")
    params = a.init_params(4, "float64")
    xs, ys = batch(4, head)
    ys[0] = -1
    if head == "per_step":
        ys[1, 3:6] = -1
    resets = np.zeros((B, T), dtype=bool)
    resets[2, 4] = True
    lengths = np.array([T, T - 1, 5], dtype=np.int32)
    assert_same(as_np(a.loss_and_grad(params, xs, ys, None, lengths, resets)),
                as_np(b.loss_and_grad(params, xs, ys, None, lengths, resets)), tol=1e-10)


def test_torch_cross_entropy_ignore_index():
    """The loss against PyTorch's nll_loss(ignore_index=-1) of the module's own
    log-probabilities (forward): the mean over the scored steps only."""
    torch = pytest.importorskip("torch")
    m = module(spec(), "numpy")
    params = m.init_params(5, "float64")
    xs, ys = batch(5)
    ys[0, :4] = -1
    ys[2, 7] = -1
    probs, _ = m.forward(params, xs)
    logp = torch.log(torch.tensor(np.asarray(probs))).reshape(B * T, C)
    want = torch.nn.functional.nll_loss(logp, torch.tensor(ys.reshape(-1), dtype=torch.long),
                                        ignore_index=-1)
    loss, _, _ = m.loss_and_grad(params, xs, ys)
    assert loss == pytest.approx(float(want), rel=1e-12)


def test_numpy_refuses_other_negative_and_too_large_class_ids():
    m = module(spec(), "numpy")
    params = m.init_params(0, "float64")
    xs, ys = batch(0)
    for bad in (-2, C):
        wrong = ys.copy()
        wrong[1, 2] = bad
        with pytest.raises(ValueError, match=rf"ys: class ids must be in 0\.\.{C - 1}, got "
                                             rf"values in .* \(or -1: not scored\)"):
            m.loss_and_grad(params, xs, wrong)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head,bptt", [("per_step", ""), ("per_step", "k1 2 k2 5"),
                                       ("last", "")])
@pytest.mark.parametrize("bad", [-2, C, C + 7])
def test_both_modules_refuse_out_of_range_class_ids_alike(backend, head, bptt, bad):
    """A NumPy `ys` with a class id outside 0..C-1 (and not -1) is one ValueError from
    loss_and_grad and train_step, with the same text in both backends: the JAX module
    used to score it silently (an id C as a logit of 0, -2 as scored)."""
    m = module(spec(head, bptt), backend)
    params = m.init_params(0, "float64")
    opt = m.init_opt_state(params)
    xs, ys = batch(1, head)
    wrong = ys.copy()
    wrong[(1, 2) if head == "per_step" else 1] = bad
    lo, hi = int(wrong.min()), int(wrong.max())
    text = f"ys: class ids must be in 0..{C - 1}, got values in {lo}..{hi} (or -1: not scored)"
    with pytest.raises(ValueError) as err:
        m.loss_and_grad(params, xs, wrong)
    assert str(err.value) == text
    with pytest.raises(ValueError) as err:
        m.train_step(params, opt, xs, wrong)
    assert str(err.value) == text
    wrong[wrong == bad] = -1  # -1 is taken
    assert np.isfinite(float(m.loss_and_grad(params, xs, wrong)[0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [-1, V, V + 9])
def test_both_modules_refuse_out_of_range_token_ids_alike(backend, bad):
    """A NumPy `xs` (or step's `x_t`) with a token id outside 0..V-1 is one ValueError
    from every entry point, with the same text in both backends: the JAX module read it
    as a zero vector (a jax.Array still is, not read on the host; docs/jax.md)."""
    m = module(spec(), backend)
    params = m.init_params(0, "float64")
    opt = m.init_opt_state(params)
    xs, ys = batch(3)
    wrong = xs.copy()
    wrong[2, 4] = bad
    lo, hi = int(wrong.min()), int(wrong.max())
    text = f"xs: token ids must be in 0..{V - 1}, got values in {lo}..{hi}"
    calls = {
        "forward": lambda: m.forward(params, wrong),
        "loss_and_grad": lambda: m.loss_and_grad(params, wrong, ys),
        "train_step": lambda: m.train_step(params, opt, wrong, ys),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == text, name
    x_t = wrong[:, 4]
    with pytest.raises(ValueError) as err:
        m.step(params, x_t, m.initial_state(B, "float64"))
    assert str(err.value) == text.replace("xs:", "x_t:").replace(
        f"{lo}..{hi}", f"{int(x_t.min())}..{int(x_t.max())}")
    if backend == "jax":  # a jax.Array is not read on the host: a zero vector, as documented
        import jax.numpy as jnp

        probs, _ = m.forward(params, jnp.asarray(wrong))
        assert np.all(np.isfinite(np.asarray(probs)))


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax not importable")
@pytest.mark.parametrize("head", ["per_step", "last"])
def test_jax_array_class_ids_out_of_range_give_a_nan_loss(head):
    """A jax.Array `ys` is not read on the host (a device-to-host copy per call): an id
    out of range makes the loss NaN, so it is not scored silently, and the gradient stays
    finite. In range, a jax.Array gives the NumPy array's results."""
    import jax.numpy as jnp

    m = module(spec(head), "jax")
    params = m.init_params(0, "float64")
    opt = m.init_opt_state(params)
    xs, ys = batch(2, head)
    assert_same(as_np(m.loss_and_grad(params, xs, jnp.asarray(ys))),
                as_np(m.loss_and_grad(params, xs, ys)), tol=0)
    for bad in (-2, C):
        wrong = ys.copy()
        wrong[(0, 3) if head == "per_step" else 0] = bad
        loss, grads, _ = m.loss_and_grad(params, xs, jnp.asarray(wrong))
        assert np.isnan(float(loss))
        assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())
        metrics = m.train_step(params, opt, xs, jnp.asarray(wrong))[3]
        assert np.isnan(float(metrics["loss"]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k1,k2,docs", [(3, 7, False), (4, 10, True), (2, 5, False)])
def test_padded_reaching_windows_are_the_short_windows(backend, k1, k2, docs):
    """rnnc train's text BPTT(k2; k1) windows near the stream's start (fewer steps than
    their reach) are padded at the front to one length, so a JAX module compiles once:
    token 0, unscored, with a reset at the stream's first step. The call gives the loss,
    gradients and final state of the short window it stands for, to 1e-12 in float64."""
    from rnnc.data import reaching_stream_windows

    m = module(spec(bptt=f"k1 {k1} k2 {k2}"), backend)
    params = m.init_params(3, "float64")
    rng = np.random.default_rng(k1 + k2)
    tokens = rng.integers(0, C, 80)
    starts = (rng.random(80) < 0.1) if docs else None
    reach = -(-k2 // k1) * k1
    windows = list(reaching_stream_windows(tokens, B, k1, reach, starts))
    padded = 0
    for i, w in enumerate(windows[: reach // k1 + 1]):
        assert w.x.shape == (B, reach)
        pad = reach - k1 - (i * k1 - max(0, (i + 1) * k1 - reach))  # before the stream
        padded += pad > 0
        resets = w.resets[:, pad:] if docs else None  # (no documents: None, as it was)
        want = m.loss_and_grad(params, w.x[:, pad:], w.y[:, pad:], None, w.lengths - pad,
                               resets)
        got = m.loss_and_grad(params, w.x, w.y, None, w.lengths, w.resets)
        assert_same(as_np(got), as_np(want), tol=1e-12)
        for name, v in as_np(got)[2].items():  # the final state
            np.testing.assert_allclose(v, as_np(want)[2][name], rtol=1e-12, atol=1e-12)
    assert padded == reach // k1 - 1


def _wrapped(text: str, backend: str, seen: list):
    """A fresh module whose loss_and_grad records the targets it is given."""
    m = load_module(source_for(program_from_text(text, V, C), backend), f"seen_{backend}")
    inner = m.loss_and_grad

    def loss_and_grad(params, xs, ys, *args, **kw):
        seen.append(np.array(ys))
        return inner(params, xs, ys, *args, **kw)

    m.loss_and_grad = loss_and_grad
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head,fraction,marked", [("per_step", 0.3, 10), ("per_step", 0.01, 1),
                                                  ("last", 0.5, 2), ("per_step", 0.0, 0)])
def test_gradcheck_marks_that_fraction_of_the_targets(backend, head, fraction, marked):
    """`unscored` makes round(fraction * targets) of the batch's class ids -1 (at least one),
    the very targets loss_and_grad is checked on, and the gradients still match."""
    seen: list = []
    info: dict = {}
    m = _wrapped(spec(head, "k1 2 k2 5" if head == "per_step" else ""), backend, seen)
    report = gradcheck(m, seed=1, T=8, B=4, resets=True, unscored=fraction, info=info)
    assert max(err for _, err in report) < 1e-6, report
    (ys,) = seen
    assert ys.size == info["targets"] == (32 if head == "per_step" else 4)
    assert int((ys == -1).sum()) == info["unscored"] == marked
    assert ((ys >= 0) & (ys < C) | (ys == -1)).all()


def test_gradcheck_refuses_unscored_without_class_targets():
    from rnnc.errors import RnncError

    m = load_module(source_for(program_from_text(LINEAR_SPEC), "numpy"), "linear_head")
    with pytest.raises(RnncError, match="head is linear"):
        gradcheck(m, unscored=0.3)
    with pytest.raises(RnncError, match="--unscored must be a fraction >= 0 and < 1, not 1"):
        gradcheck(module(spec(), "numpy"), unscored=1.0)


SOFTMAX_SPEC = ("model m {\n  input onehot(vocab: 5)\n  layer lstm(hidden: 3)\n"
                "  head softmax(at: per_step, classes: 4)\n}\n")
LINEAR_SPEC = ("model m {\n  input dense(features: 2)\n  layer gru(hidden: 3)\n"
               "  head linear(at: last, size: 1)\n}\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rnnc_gradcheck_unscored(tmp_path, backend):
    """`rnnc gradcheck --unscored F`: the header says how many class targets were made -1,
    and the gradients pass on both backends."""
    from typer.testing import CliRunner

    from rnnc.cli import app

    path = tmp_path / "s.rnn"
    path.write_text(SOFTMAX_SPEC)
    r = CliRunner().invoke(app, ["gradcheck", str(path), "-b", backend, "--unscored", "0.4",
                                 "--steps", "6", "--batch", "4"])
    assert r.exit_code == 0, r.output
    assert "T=6, B=4, 1 window(s), unscored 0.4: 10 of 24 class targets -1)" in r.output
    assert "passed" in r.output
    r = CliRunner().invoke(app, ["gradcheck", str(path), "-b", backend])
    assert r.exit_code == 0 and "class targets -1" not in r.output


@pytest.mark.parametrize("args, message", [
    (["--unscored", "0.5"], "s.rnn:4:3: error: --unscored marks class targets -1 (not "
     "scored), but this model's head is linear"),
    (["--unscored", "1"], "error: --unscored must be a fraction >= 0 and < 1, not 1.0"),
    (["--unscored", "-0.5"], "error: --unscored must be a fraction >= 0 and < 1, not -0.5"),
    (["--unscored", "nan"], "error: --unscored must be a fraction >= 0 and < 1, not nan"),
])
def test_rnnc_gradcheck_refuses_unscored_it_cannot_apply(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from rnnc.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.rnn").write_text(LINEAR_SPEC)
    r = CliRunner().invoke(app, ["gradcheck", "s.rnn", *args])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert r.output.startswith(message), r.output
    assert "Traceback" not in r.output and "passed" not in r.output
