"""Tests for the training-update runtime copied into generated modules.

backends/numpy/runtime_optim.py is checked against torch.optim / torch.nn.utils (and
optax.nadam for Nesterov-Adam); backends/jax/runtime_optim.py is checked against the
NumPy version. Everything runs in float64 and must agree to 1e-12 relative.
"""

import copy
import importlib.util
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


try:  # the JAX comparisons need float64; enable it before any jax array exists
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover - jax is optional, its tests skip
    jax = None


ROOT = Path(__file__).resolve().parents[1]
NP_FILE = ROOT / "backends" / "numpy" / "runtime_optim.py"
JAX_FILE = ROOT / "backends" / "jax" / "runtime_optim.py"
MARKER = "# --- rnnc runtime begins ---"
RTOL = 1e-12


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rt = _load(NP_FILE, "rnnc_test_runtime_optim_numpy")


@pytest.fixture(scope="module")
def jrt():
    pytest.importorskip("jax")
    return _load(JAX_FILE, "rnnc_test_runtime_optim_jax")


# Parameter names: "enc.b" and "dec.b_out" are biases (exempt from L1/L2 by default: the
# symbol is "b" or "b_*"), "dec.bias" is not; "h0" is a 0-d array.
SHAPES = {
    "enc.W": (4, 3),
    "enc.b": (4,),
    "dec.W_out": (2, 4),
    "dec.b_out": (2,),
    "dec.bias": (2,),
    "h0": (),
}

# Non-default hyperparameters, so a defaults mix-up would show.
UPDATERS = {
    "sgd": {"name": "sgd", "lr": 0.05},
    "momentum": {"name": "momentum", "lr": 0.03, "momentum": 0.8},
    "nesterov": {"name": "nesterov", "lr": 0.03, "momentum": 0.85},
    "adagrad": {"name": "adagrad", "lr": 0.1, "eps": 1e-9, "initial_accumulator": 0.1},
    "rmsprop": {"name": "rmsprop", "lr": 0.01, "decay": 0.95, "eps": 1e-7},
    "adam": {"name": "adam", "lr": 0.02, "b1": 0.85, "b2": 0.99, "eps": 1e-7},
    "nadam": {"name": "nadam", "lr": 0.02, "b1": 0.85, "b2": 0.99, "eps": 1e-7},
}

SCHEDULES = {
    "none": None,
    "constant": {"name": "constant"},
    "exponential": {"name": "exponential", "decay": 0.5, "every": 2},
    "step": {"name": "step", "factor": 0.5, "every": 2},
    "cosine": {"name": "cosine", "total": 6, "min_lr": 0.001, "warmup": 2},
    "warmup_linear": {"name": "warmup_linear", "warmup": 3},
}

N_STEPS = 6


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _grads(seed):
    rng = np.random.default_rng(1000 + seed)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _assert_close(a, b, rtol=RTOL):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol, atol=0, err_msg=k)


def _run_numpy(updater, schedule=None, steps=N_STEPS):
    params = _params()
    state = rt.init_opt_state(params, updater)
    history = []
    for i in range(steps):
        params, state = rt.apply_updates(params, _grads(i), state, updater, schedule)
        history.append(params)
    return history, state


# --- numpy vs torch.optim ----------------------------------------------------------------


def _torch_optimizer(torch, updater, tensors):
    h = {**rt.UPDATER_DEFAULTS[updater["name"]], **updater}
    name = h["name"]
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=h["lr"])
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            tensors, lr=h["lr"], momentum=h["momentum"], nesterov=name == "nesterov"
        )
    if name == "adagrad":
        return torch.optim.Adagrad(
            tensors, lr=h["lr"], eps=h["eps"], initial_accumulator_value=h["initial_accumulator"]
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(tensors, lr=h["lr"], alpha=h["decay"], eps=h["eps"])
    if name == "adam":
        return torch.optim.Adam(tensors, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"])
    raise AssertionError(name)


def _run_torch(torch, updater, schedule=None, make_opt=None, steps=N_STEPS):
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in _params().items()}
    for t in tensors.values():
        t.requires_grad_(True)
    opt = (make_opt or _torch_optimizer)(torch, updater, list(tensors.values()))
    history = []
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = rt.learning_rate(i, updater, schedule)
        for k, g in _grads(i).items():
            tensors[k].grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
    return history


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_numpy_matches_torch(name):
    torch = pytest.importorskip("torch")
    ours, _ = _run_numpy(UPDATERS[name])
    theirs = _run_torch(torch, UPDATERS[name])
    for a, b in zip(ours, theirs, strict=True):
        _assert_close(a, b)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_numpy_schedule_matches_torch_with_per_step_lr(name):
    """apply_updates uses learning_rate(step before the update) for that update."""
    torch = pytest.importorskip("torch")
    schedule = SCHEDULES["cosine"]
    ours, _ = _run_numpy(UPDATERS[name], schedule)
    theirs = _run_torch(torch, UPDATERS[name], schedule)
    for a, b in zip(ours, theirs, strict=True):
        _assert_close(a, b)


def test_numpy_default_hyperparameters_match_torch():
    torch = pytest.importorskip("torch")
    for name in ["momentum", "adagrad", "rmsprop", "adam"]:
        ours, _ = _run_numpy({"name": name}, steps=3)
        theirs = _run_torch(torch, {"name": name}, steps=3)
        for a, b in zip(ours, theirs, strict=True):
            _assert_close(a, b)


# --- nadam -------------------------------------------------------------------------------


def test_nadam_matches_optax():
    optax = pytest.importorskip("optax")
    pytest.importorskip("jax")
    import jax.numpy as jnp

    upd = UPDATERS["nadam"]
    ours, _ = _run_numpy(upd)
    tx = optax.nadam(upd["lr"], b1=upd["b1"], b2=upd["b2"], eps=upd["eps"])
    params = {k: jnp.asarray(v) for k, v in _params().items()}
    state = tx.init(params)
    for i in range(N_STEPS):
        grads = {k: jnp.asarray(v) for k, v in _grads(i).items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert all(p.dtype == jnp.float64 for p in params.values())
        _assert_close(ours[i], params)


def _torch_nadam(momentum_decay):
    def make(torch, updater, tensors):
        return torch.optim.NAdam(
            tensors,
            lr=updater["lr"],
            betas=(updater["b1"], updater["b2"]),
            eps=updater["eps"],
            momentum_decay=momentum_decay,
        )

    return make


def test_nadam_vs_torch_nadam():
    """torch's NAdam equals ours only as momentum_decay -> inf (mu_t = b1 for all t)."""
    torch = pytest.importorskip("torch")
    upd = UPDATERS["nadam"]
    ours, _ = _run_numpy(upd)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps mu_product in the default dtype
    try:
        limit = _run_torch(torch, upd, make_opt=_torch_nadam(1e9))
        default = _run_torch(torch, upd, make_opt=_torch_nadam(4e-3))
    finally:
        torch.set_default_dtype(old)
    for a, b in zip(ours, limit, strict=True):
        _assert_close(a, b)
    # torch's default momentum schedule (mu_t ramps up from b1/2) is a different method
    assert not np.allclose(ours[-1]["enc.W"], default[-1]["enc.W"], rtol=1e-6, atol=0)


# --- jax vs numpy ------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(UPDATERS))
def test_jax_matches_numpy(jrt, name, schedule):
    import jax.numpy as jnp

    upd, sch = UPDATERS[name], SCHEDULES[schedule]
    ours, np_state = _run_numpy(upd, sch)
    traces = []

    def step(p, g, s):
        traces.append(1)  # runs once per trace, not per call
        return jrt.apply_updates(p, g, s, upd, sch)

    step_fn = jax.jit(step)
    params = {k: jnp.asarray(v) for k, v in _params().items()}
    state = jrt.init_opt_state(params, upd)
    assert set(state) == set(np_state)
    for i in range(N_STEPS):
        grads = {k: jnp.asarray(v) for k, v in _grads(i).items()}
        params, state = step_fn(params, grads, state)
        _assert_close(ours[i], params)
    assert len(traces) == 1  # one compilation serves every step
    _assert_close(
        {k: v for k, v in np_state.items() if k != "step"},
        {k: v for k, v in state.items() if k != "step"},
    )
    assert int(state["step"]) == int(np_state["step"]) == N_STEPS


def test_jax_hyperparameters_may_be_arrays(jrt):
    """The per-parameter update is jitted with the hyperparameters as a static key; one
    given as an array (not hashable, maybe traced) takes the plain path, same numbers."""
    import jax.numpy as jnp

    upd = UPDATERS["adam"]
    as_array = {k: (jnp.asarray(v) if k == "b1" else v) for k, v in upd.items()}
    params = {k: jnp.asarray(v) for k, v in _params().items()}
    grads = {k: jnp.asarray(v) for k, v in _grads(0).items()}
    state = jrt.init_opt_state(params, upd)
    plain = jrt.apply_updates(params, grads, state, upd)
    traced = jax.jit(lambda b1: jrt.apply_updates(params, grads, state, {**upd, "b1": b1}))
    for got in (jrt.apply_updates(params, grads, state, as_array), traced(upd["b1"])):
        _assert_close(plain[0], got[0])
        _assert_close(
            {k: v for k, v in plain[1].items() if k != "step"},
            {k: v for k, v in got[1].items() if k != "step"},
        )


def test_jax_keeps_float32_state_dtypes(jrt):
    import jax.numpy as jnp

    upd = UPDATERS["nadam"]
    params = {k: jnp.asarray(v, jnp.float32) for k, v in _params().items()}
    grads = {k: jnp.asarray(v) for k, v in _grads(0).items()}  # float64 grads on purpose
    state = jrt.init_opt_state(params, upd)
    step_fn = jax.jit(lambda p, g, s: jrt.apply_updates(p, g, s, upd, SCHEDULES["cosine"]))
    new_params, new_state = step_fn(params, grads, state)
    for k in params:
        assert new_params[k].dtype == jnp.float32
    for k in state:
        assert new_state[k].dtype == state[k].dtype


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_jax_learning_rate_matches_numpy(jrt, schedule):
    import jax.numpy as jnp

    upd, sch = UPDATERS["adam"], SCHEDULES[schedule]
    lr_fn = jax.jit(lambda s: jrt.learning_rate(s, upd, sch))
    for step in range(12):
        expected = rt.learning_rate(step, upd, sch)
        assert isinstance(expected, float)
        np.testing.assert_allclose(float(lr_fn(jnp.int32(step))), expected, rtol=RTOL)


def test_jax_clip_and_regularize_match_numpy(jrt):
    import jax.numpy as jnp

    params, grads = _params(), _grads(0)
    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    jgrads = {k: jnp.asarray(v) for k, v in grads.items()}
    for clip in [None, {"norm": 1.0}, {"value": 0.5}, {"value": 0.5, "norm": 1.0}, {"norm": 1e3}]:
        ours, norm = rt.clip_gradients(grads, clip)
        theirs, jnorm = jax.jit(lambda g, c=clip: jrt.clip_gradients(g, c))(jgrads)
        _assert_close(ours, theirs)
        np.testing.assert_allclose(float(jnorm), norm, rtol=RTOL)
    ours = rt.regularize(grads, params, 0.01, 0.1)
    theirs = jax.jit(lambda g, p: jrt.regularize(g, p, 0.01, 0.1))(jgrads, jparams)
    _assert_close(ours, theirs)
    np.testing.assert_allclose(
        float(jrt.regularization_loss(jparams, 0.01, 0.1)),
        rt.regularization_loss(params, 0.01, 0.1),
        rtol=RTOL,
    )


def test_default_regularization_exemption_is_the_modules_bias_rule(jrt):
    """Both runtimes exempt what the generated modules exempt: symbol b or b_*."""
    biases = ["b", "enc.b", "layer1.fwd.b_h", "m/dec.b_out", "x/b_"]
    others = ["enc.W", "dec.bias", "layer1.beta", "bidir.W", "h0", "layer1.bwd.U_b"]
    for runtime in (rt, jrt):
        assert [runtime._opt_is_bias(n) for n in biases] == [True] * len(biases)
        assert [runtime._opt_is_bias(n) for n in others] == [False] * len(others)
    params, grads = _params(), _grads(0)
    out = rt.regularize(grads, params, 0.0, 0.1)
    for name in params:
        expected = grads[name] + (0.0 if name in ("enc.b", "dec.b_out") else 0.1 * params[name])
        np.testing.assert_allclose(out[name], expected, rtol=RTOL, err_msg=name)


# --- schedules ---------------------------------------------------------------------------


def test_schedule_formulas():
    upd = {"name": "sgd", "lr": 0.1}
    lr = rt.learning_rate
    assert lr(0, upd, None) == 0.1
    assert lr(123, upd, {"name": "constant"}) == 0.1
    assert lr(57, {"name": "adam"}, None) == rt.UPDATER_DEFAULTS["adam"]["lr"]

    exp = {"name": "exponential", "decay": 0.97, "every": 100}
    assert lr(0, upd, exp) == pytest.approx(0.1, rel=1e-15)
    assert lr(100, upd, exp) == pytest.approx(0.1 * 0.97, rel=1e-15)
    assert lr(250, upd, exp) == pytest.approx(0.1 * 0.97**2.5, rel=1e-15)

    stp = {"name": "step", "factor": 0.5, "every": 1000}
    assert lr(999, upd, stp) == pytest.approx(0.1, rel=1e-15)
    assert lr(1000, upd, stp) == pytest.approx(0.05, rel=1e-15)
    assert lr(2999, upd, stp) == pytest.approx(0.025, rel=1e-15)

    cos = {"name": "cosine", "total": 1000, "min_lr": 0.01}
    assert lr(0, upd, cos) == pytest.approx(0.1, rel=1e-15)
    assert lr(500, upd, cos) == pytest.approx(0.055, rel=1e-14)
    assert lr(250, upd, cos) == pytest.approx(
        0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-14
    )
    assert lr(1000, upd, cos) == pytest.approx(0.01, rel=1e-14)
    assert lr(5000, upd, cos) == pytest.approx(0.01, rel=1e-14)

    warm_cos = {"name": "cosine", "total": 110, "min_lr": 0.0, "warmup": 10}
    assert lr(0, upd, warm_cos) == pytest.approx(0.01, rel=1e-14)
    assert lr(9, upd, warm_cos) == pytest.approx(0.1, rel=1e-14)
    assert lr(10, upd, warm_cos) == pytest.approx(0.1, rel=1e-14)
    assert lr(60, upd, warm_cos) == pytest.approx(0.05, rel=1e-14)
    assert lr(110, upd, warm_cos) == pytest.approx(0.0, abs=1e-18)

    warm = {"name": "warmup_linear", "warmup": 100}
    assert lr(0, upd, warm) == pytest.approx(0.001, rel=1e-14)
    assert lr(49, upd, warm) == pytest.approx(0.05, rel=1e-14)
    assert lr(99, upd, warm) == pytest.approx(0.1, rel=1e-14)
    assert lr(10_000, upd, warm) == pytest.approx(0.1, rel=1e-14)


def test_schedule_defaults_fill_missing_keys():
    upd = {"name": "sgd", "lr": 1.0}
    for name, defaults in rt.SCHEDULE_DEFAULTS.items():
        assert rt.learning_rate(7, upd, {"name": name}) == rt.learning_rate(
            7, upd, {"name": name, **defaults}
        )


def test_unknown_names_and_keys_raise():
    params = _params()
    with pytest.raises(ValueError, match="unknown updater"):
        rt.init_opt_state(params, {"name": "adamw"})
    with pytest.raises(ValueError, match="beta1"):
        rt.init_opt_state(params, {"name": "adam", "beta1": 0.9})
    with pytest.raises(ValueError, match="unknown schedule"):
        rt.learning_rate(0, {"name": "sgd"}, {"name": "poly"})
    with pytest.raises(ValueError, match="gamma"):
        rt.learning_rate(0, {"name": "sgd"}, {"name": "step", "gamma": 0.1})


# --- optimizer state ---------------------------------------------------------------------


def test_init_opt_state_layout():
    params = _params()
    expected_slots = {
        "sgd": [],
        "momentum": ["m"],
        "nesterov": ["m"],
        "adagrad": ["v"],
        "rmsprop": ["v"],
        "adam": ["m", "v"],
        "nadam": ["m", "v"],
    }
    assert set(expected_slots) == set(rt.UPDATER_DEFAULTS)
    for name, slots in expected_slots.items():
        state = rt.init_opt_state(params, {"name": name})
        keys = {"step"} | {f"{s}/{k}" for s in slots for k in params}
        assert set(state) == keys
        assert isinstance(state["step"], np.ndarray) and state["step"].shape == ()
        assert int(state["step"]) == 0
        for key, value in state.items():
            assert isinstance(value, np.ndarray)
            if key != "step":
                assert value.shape == params[key.split("/", 1)[1]].shape
    acc = rt.init_opt_state(params, {"name": "adagrad", "initial_accumulator": 0.25})
    assert all(np.all(acc[f"v/{k}"] == 0.25) for k in params)


def test_numpy_apply_updates_does_not_mutate_inputs():
    for name, upd in UPDATERS.items():
        params, grads = _params(), _grads(0)
        state = rt.init_opt_state(params, upd)
        params, state = rt.apply_updates(params, grads, state, upd)  # non-trivial state
        before = copy.deepcopy((params, grads, state))
        new_params, new_state = rt.apply_updates(params, grads, state, upd, SCHEDULES["cosine"])
        _assert_close(params, before[0])
        _assert_close(grads, before[1])
        _assert_close(state, before[2])
        for k in params:
            assert not np.shares_memory(new_params[k], params[k]), name
        for k in state:
            assert not np.shares_memory(new_state[k], state[k]), name
        assert int(new_state["step"]) == 2


def test_numpy_keeps_float32():
    params = {k: v.astype(np.float32) for k, v in _params().items()}
    for upd in UPDATERS.values():
        state = rt.init_opt_state(params, upd)
        new_params, new_state = rt.apply_updates(params, _grads(0), state, upd)
        assert all(new_params[k].dtype == np.float32 for k in params)
        assert all(new_state[k].dtype == state[k].dtype for k in state)


# --- clipping ----------------------------------------------------------------------------


def _torch_grads(torch, grads):
    tensors = []
    for g in grads.values():
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g, dtype=torch.float64)
        tensors.append(t)
    return tensors


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    grads = _grads(3)
    tensors = _torch_grads(torch, grads)
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    clipped, norm = rt.clip_gradients(grads, {"norm": max_norm})
    np.testing.assert_allclose(norm, float(total), rtol=RTOL)
    _assert_close(clipped, {k: t.grad.numpy() for k, t in zip(grads, tensors, strict=True)})
    if max_norm < norm:
        assert rt._opt_global_norm(clipped) < max_norm  # the 1e-6 keeps it just below
    else:
        _assert_close(clipped, grads)


def test_clip_value_matches_torch():
    torch = pytest.importorskip("torch")
    grads = _grads(4)
    tensors = _torch_grads(torch, grads)
    torch.nn.utils.clip_grad_value_(tensors, 0.7)
    clipped, norm = rt.clip_gradients(grads, {"value": 0.7})
    _assert_close(clipped, {k: t.grad.numpy() for k, t in zip(grads, tensors, strict=True)})
    assert norm == pytest.approx(rt._opt_global_norm(grads), rel=1e-15)  # before clipping


def test_clip_value_then_norm_matches_torch():
    torch = pytest.importorskip("torch")
    grads = _grads(5)
    tensors = _torch_grads(torch, grads)
    torch.nn.utils.clip_grad_value_(tensors, 0.7)
    torch.nn.utils.clip_grad_norm_(tensors, 1.5)
    clipped, norm = rt.clip_gradients(grads, {"norm": 1.5, "value": 0.7})
    _assert_close(clipped, {k: t.grad.numpy() for k, t in zip(grads, tensors, strict=True)})
    assert norm == pytest.approx(rt._opt_global_norm(grads), rel=1e-15)  # raw grads' norm


def test_clip_none_is_identity_and_does_not_mutate():
    grads = _grads(6)
    before = copy.deepcopy(grads)
    out, norm = rt.clip_gradients(grads, None)
    _assert_close(out, grads)
    assert norm == pytest.approx(math.sqrt(sum(np.sum(g**2) for g in grads.values())), rel=1e-14)
    rt.clip_gradients(grads, {"norm": 0.1, "value": 0.1})
    _assert_close(grads, before)


# --- regularization ----------------------------------------------------------------------


@pytest.mark.parametrize("exclude", [None, "nothing", "weights"])
def test_regularize_is_gradient_of_regularization_loss(exclude):
    kwargs = {
        None: {},
        "nothing": {"exclude": lambda name: False},
        "weights": {"exclude": lambda name: "W" in name},
    }[exclude]
    params, zero = _params(7), {k: np.zeros(s) for k, s in SHAPES.items()}
    l1, l2 = 0.03, 0.2
    grads = rt.regularize(zero, params, l1, l2, **kwargs)
    before = copy.deepcopy(params)
    h = 1e-6
    for k, p in params.items():
        for idx in np.ndindex(p.shape):
            plus, minus = dict(params), dict(params)
            plus[k], minus[k] = p.copy(), p.copy()
            plus[k][idx] += h
            minus[k][idx] -= h
            fd = (
                rt.regularization_loss(plus, l1, l2, **kwargs)
                - rt.regularization_loss(minus, l1, l2, **kwargs)
            ) / (2 * h)
            assert fd == pytest.approx(grads[k][idx], rel=1e-6, abs=1e-9), (k, idx)
    _assert_close(params, before)
    # exempt parameters keep their gradient untouched
    excluded = {None: rt._opt_is_bias, "nothing": lambda n: False, "weights": lambda n: "W" in n}
    for k in params:
        if excluded[exclude](k):
            assert np.all(grads[k] == 0.0)
        else:
            assert np.any(grads[k] != 0.0)


def test_regularize_values():
    params = {"enc.W": np.array([-2.0, 0.0, 3.0]), "enc.b": np.array([5.0])}
    grads = {"enc.W": np.array([1.0, 1.0, 1.0]), "enc.b": np.array([1.0])}
    out = rt.regularize(grads, params, l1=0.5, l2=0.1)
    np.testing.assert_allclose(out["enc.W"], [1.0 - 0.2 - 0.5, 1.0, 1.0 + 0.3 + 0.5])
    np.testing.assert_array_equal(out["enc.b"], [1.0])
    assert grads["enc.W"].tolist() == [1.0, 1.0, 1.0]  # input untouched
    loss = rt.regularization_loss(params, l1=0.5, l2=0.1)
    assert loss == pytest.approx(0.5 * 0.1 * 13.0 + 0.5 * 5.0, rel=1e-15)


# --- the copied text is self-contained and lint-clean -----------------------------------


def _runtime_module_text(path):
    text = path.read_text()
    assert text.count(MARKER) == 1  # exactly once, so a plain split finds the right spot
    assert MARKER in text.splitlines()  # on a line of its own
    head, body = text.split(MARKER)
    lines = head.splitlines()
    at = [i for i, ln in enumerate(lines) if ln.startswith(("import ", "from "))]
    imports = lines[at[0] : at[-1] + 1]  # the file's import block, blank lines included
    return "\n".join(imports) + "\n\n\n" + body.lstrip("\n")


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_runtime_text_is_self_contained(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    path = NP_FILE if backend == "numpy" else JAX_FILE
    source = _runtime_module_text(path)
    namespace = {"__name__": f"rnnc_generated_{backend}"}
    exec(compile(source, f"<{backend} runtime>", "exec"), namespace)
    public = {
        "UPDATER_DEFAULTS",
        "SCHEDULE_DEFAULTS",
        "init_opt_state",
        "learning_rate",
        "clip_gradients",
        "regularize",
        "regularization_loss",
        "apply_updates",
    }
    defined = {k for k in namespace if not k.startswith("__")}
    assert public <= defined
    extra = defined - public - {"np", "math", "jax", "jnp"}
    assert all(k.startswith("_") for k in extra), sorted(extra)
    # the copied functions work on their own
    upd = {"name": "adam", "lr": 0.01}
    params = {"w": np.ones(3)}
    state = namespace["init_opt_state"](params, upd)
    new_params, _ = namespace["apply_updates"](params, {"w": np.ones(3)}, state, upd)
    expected = 1.0 - 0.01 * 1.0 / (1.0 + 1e-8)  # first adam step: m_hat / sqrt(v_hat) = 1
    np.testing.assert_allclose(np.asarray(new_params["w"]), expected, rtol=1e-12)
    assert namespace["UPDATER_DEFAULTS"] == rt.UPDATER_DEFAULTS
    assert namespace["SCHEDULE_DEFAULTS"] == rt.SCHEDULE_DEFAULTS


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_runtime_text_is_ruff_clean(backend, tmp_path):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    path = NP_FILE if backend == "numpy" else JAX_FILE
    copy_path = tmp_path / f"runtime_optim_{backend}.py"
    copy_path.write_text(_runtime_module_text(path))
    for target in (copy_path, path):
        result = subprocess.run(
            [
                ruff,
                "check",
                "--isolated",
                "--no-cache",
                "--line-length",
                "100",
                "--target-version",
                "py311",
                "--select",
                "E,F,I,UP,B",
                "--config",
                "lint.isort.lines-after-imports = 2",
                str(target),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _doc_table_defaults(first_cell: str) -> dict[str, dict[str, float]]:
    """{name: {option: default}} from the language reference's table whose header starts
    with `first_cell`: rows `| `name` | `opt` 0.1, `opt2` 0.9 | ... |`."""
    import re

    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    table = doc.split(f"| {first_cell} |", 1)[1].split("\n\n", 1)[0]
    out = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = cells[0].strip("`")
        out[name] = {k: float(v) for k, v in re.findall(r"`(\w+)` ([-\d.e]+)", cells[1])}
    return out


def test_the_language_reference_states_the_runtimes_defaults():
    """The updater and schedule tables of docs/language.md against the runtime every
    module copies (the schedule table was missing: a learner could not find `every`)."""
    assert _doc_table_defaults("updater") == {
        k: {o: float(v) for o, v in d.items()} for k, d in rt.UPDATER_DEFAULTS.items()}
    assert _doc_table_defaults("schedule") == {
        k: {o: float(v) for o, v in d.items()} for k, d in rt.SCHEDULE_DEFAULTS.items()}
