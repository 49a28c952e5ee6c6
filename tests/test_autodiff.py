"""The autodiff pass on its own: the backward IR, interpreted, against finite differences.

A small interpreter runs a cell's forward IR over T steps and its backward IR
(:class:`CellGrad`: body per step in reverse, hoisted over the stacks, invariant
once) for the objective L = sum_t <w_t, y_t> + sum_s <v_s, final s>. Every
gradient -- parameters, inputs at every step, the initial state -- must equal
central differences of L. No emitter is involved. ``tests/fixtures/autodiff.txt``
holds cell IR -> backward IR pairs (the hoisted weight gradients among them), in the
format of the pass fixtures.
"""

import doctest
import os
from pathlib import Path

import numpy as np
import pytest
from fixture_blocks import blocks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnc.ir.lower import library, lower_cell
from rnnc.ir.nodes import Cell
from rnnc.ir.ops import RUNTIME_HELPERS, render
from rnnc.ir.parse import parse_cell
from rnnc.ir.passes import PIPELINE, get_pass
from rnnc.ir.passes import autodiff as autodiff_module
from rnnc.ir.passes.autodiff import GRAD_RULES, CellGrad, autodiff, grad_str, verify_grad
from rnnc.ir.passes.cse import cse_grad
from rnnc.ir.verify import verify_cell
from rnnc.spec.text import parse_text


HELPERS: dict = {"np": np}
exec(RUNTIME_HELPERS.format(xp="np"), HELPERS)


def _slice(xp, a, ins):
    if ins.attr("axis") == 0:
        return f"{a[0]}[{ins.attr('lo')}:{ins.attr('hi')}]"
    return f"{a[0]}[..., {ins.attr('lo')}:{ins.attr('hi')}]"


_CODE: dict = {}


def ev(ins, env):
    """Evaluate one instruction with the shared op table's NumPy rendering."""
    code = _CODE.get(ins)
    if code is None:
        code = _CODE[ins] = compile(render(ins, "np", overrides={"slice": _slice}), "<ir>", "eval")
    return eval(code, HELPERS, env)  # noqa: S307


def optimized(cell: Cell) -> Cell:
    for name in PIPELINE:
        cell = verify_cell(get_pass(name)(cell), after=name)
    return cell


# ------------------------------------------------------------------ interpreter


def forward(cell, params, xs, state0):
    """Values of every step: (list of per-step envs, hoisted stacks, unbatched values)."""
    env = dict(params)
    for ins in cell.instrs:
        if not ins.batched:
            env[ins.name] = ev(ins, env)
    stacks = dict(xs)
    for ins in cell.hoisted:
        if ins.batched:
            stacks[ins.name] = ev(ins, {**env, **stacks})
    state = dict(state0)
    steps = []
    for t in range(next(iter(xs.values())).shape[0]):
        e = dict(env)
        e.update({k: v[t] for k, v in stacks.items()})
        e.update(state)
        for ins in cell.body:
            if ins.batched:
                e[ins.name] = ev(ins, e)
        steps.append(e)
        state = {s: e[v] for s, v in cell.next_state}
    return steps, stacks, env, state


def objective(cell, params, xs, state0, w, v):
    steps, _, _, final = forward(cell, params, xs, state0)
    total = sum(float(np.sum(w[t] * e[cell.output])) for t, e in enumerate(steps))
    return total + sum(float(np.sum(v[s] * final[s])) for s in final)


def backward(grad: CellGrad, params, xs, state0, w, v):
    """Run the three backward sections; returns (param grads, input grads, state grads)."""
    cell = grad.cell
    steps, stacks, env, final = forward(cell, params, xs, state0)
    T = len(steps)
    seeds = dict(v)
    exports: dict[str, list] = {e: [None] * T for e in grad.exports}
    for t in reversed(range(T)):
        e = dict(steps[t])
        for s, name in grad.state_seeds:
            e[name] = seeds[s]
        e[grad.output_seed] = w[t]
        for ins in grad.body:
            e[ins.name] = ev(ins, e)
        for x in grad.exports:
            exports[x][t] = e[x]
        seeds = {s: e[d] for s, d in grad.state_grads}
    post = dict(env)
    post.update(stacks)
    for name in grad.stacked:
        post[name] = np.stack([steps[t][name] for t in range(T)])
    post.update({k: np.stack(vs) for k, vs in exports.items()})
    for ins in grad.hoisted:
        post[ins.name] = ev(ins, post)
    inv = dict(env)
    inv.update({d: post[d] for _, d in grad.partials})
    for ins in grad.invariant:
        inv[ins.name] = ev(ins, inv)
    param_grads = {p: inv[d] for p, d in grad.param_grads}
    input_grads = {x: post[d] for x, d in grad.input_grads}
    return param_grads, input_grads, seeds


def _random_problem(cell: Cell, seed: int, T: int, B: int):
    """Random params, inputs, initial state and output/final-state weights for a cell."""
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(size=p.shape) * 0.7 for p in cell.params}
    xs = {x.name: rng.normal(size=(T, B, x.size)) for x in cell.inputs}
    state0 = {s.name: rng.normal(size=(B, s.size)) * 0.5 for s in cell.states}
    w = rng.normal(size=(T, B, cell.output_size))
    v = {s.name: rng.normal(size=(B, s.size)) for s in cell.states}
    return params, xs, state0, w, v


def check_cell(cell: Cell, seed: int = 0, T: int = 4, B: int = 2, eps: float = 1e-6):
    grad = verify_grad(autodiff(cell))
    params, xs, state0, w, v = _random_problem(cell, seed, T, B)
    pg, ig, sg = backward(grad, params, xs, state0, w, v)

    def fd(arr):
        out = np.zeros_like(arr)
        for i in np.ndindex(*arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = objective(cell, params, xs, state0, w, v)
            arr[i] = old - eps
            down = objective(cell, params, xs, state0, w, v)
            arr[i] = old
            out[i] = (up - down) / (2 * eps)
        return out

    worst = {}
    for name, arr in list(params.items()) + list(xs.items()) + list(state0.items()):
        got = pg.get(name, ig.get(name, sg.get(name)))
        ref = fd(arr)
        scale = max(np.max(np.abs(ref)), np.max(np.abs(got)), 1e-8)
        worst[name] = float(np.max(np.abs(got - ref)) / scale)
    return worst


# ------------------------------------------------------------------------- cells

LIB_CASES = [
    ("elman", {}),
    ("elman", {"act": "relu"}),
    ("elman", {"act": "softsign"}),
    ("elman", {"act": "hard_sigmoid"}),
    ("elman", {"act": "softplus"}),
    ("elman", {"act": "exp"}),
    ("elman", {"act": "elu"}),
    ("elman", {"act": "log_sigmoid"}),
    ("gru", {}),
    ("gru", {"reset": "before"}),
    ("gru", {"gate_act": "hard_sigmoid"}),
    ("lstm", {}),
    ("lstm", {"peepholes": True}),
    ("lstm", {"coupled": True}),
    ("lstm", {"proj": 2}),
    ("lstm", {"cell_clip": 0.4}),
    ("lstm", {"peepholes": True, "coupled": True, "proj": 2, "cell_clip": 0.6}),
    ("lstm", {"input_gate": False, "forget_gate": False, "output_gate": False}),
    ("lstm", {"gate_act": "hard_sigmoid", "cell_act": "softsign", "out_act": "relu"}),
    ("mgu", {}),
    ("jordan", {"units": 4}),
    ("indrnn", {}),
]

CUSTOM = """
cell odd(x) {
  state h, c[2]
  param s[3]
  param W[hidden, X]
  a = [h, c]
  u = tanh(W @ x + U @ a + b)
  q = u[0:2] / (1.5 + softplus(V @ h))
  h' = clip(-u * s + exp(0.1 * h), -2.0, 2.0)
  c' = q - c * 0.5
}
cell split(x) {
  state h
  param W[5, X]
  z = W @ x + U @ h
  p = z[0:2]
  r = z[3:5]
  h' = tanh([p, r] + W2 @ z[1:4])
}
cell ln(x) {
  state h
  zx = W @ x
  xc = zx - mean(zx)
  h' = tanh(g * xc / sqrt(mean(xc * xc) + 0.1) + U @ h + sum(h) * v)
}
cell funcs(x) {
  state h, s[1]
  a = W @ x + U @ h
  p = softplus(a) + 0.5
  h' = elu(a) * 0.5 + log_sigmoid(V @ h) + log(p) - sqrt(p) + rsqrt(p) * 0.1 + sum(s)
  s' = mean(h') + sum(x) * 0.1 - s * 0.5
}
"""


def custom_cell(name: str) -> Cell:
    cdef = next(c for c in parse_text(CUSTOM, "custom.rnn").cells if c.name == name)
    size = {"odd": 3, "split": 4, "ln": 4, "funcs": 3}[name]
    return lower_cell(cdef, {}, input_size=3, hidden=size)


def lib_cell(name: str, opts: dict) -> Cell:
    return lower_cell(library()[name], opts, input_size=3, hidden=3)


@pytest.mark.parametrize("passes", [False, True], ids=["raw", "passes"])
@pytest.mark.parametrize(("name", "opts"), LIB_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for n, o in LIB_CASES])
def test_library_cell_backward_matches_finite_differences(name, opts, passes):
    cell = lib_cell(name, opts)
    if passes:
        cell = optimized(cell)
    worst = check_cell(cell)
    assert max(worst.values()) < 1e-6, worst


@pytest.mark.parametrize("passes", [False, True], ids=["raw", "passes"])
@pytest.mark.parametrize("name", ["odd", "split", "ln", "funcs"])
def test_custom_cell_backward_matches_finite_differences(name, passes):
    cell = custom_cell(name)
    if passes:
        cell = optimized(cell)
    worst = check_cell(cell, seed=1)
    assert max(worst.values()) < 1e-6, worst


# ------------------------------------------------------------------- structure


def test_every_forward_op_has_a_rule():
    from rnnc.ir.ops import OPS

    forward_ops = {"const", "add", "sub", "mul", "div", "neg", "matmul", "act", "clip",
                   "concat", "slice", "expand", "sumf", "pconcat"}
    assert forward_ops <= set(OPS)
    assert set(GRAD_RULES) == forward_ops


def test_weight_gradients_are_hoisted_out_of_the_step():
    """The per-step backward has no outer products: every weight gradient is one
    matmul over all steps in the hoisted section."""
    cell = optimized(lib_cell("lstm", {}))
    grad = autodiff(cell)
    assert not any(i.op in ("outer", "bsum") for i in grad.body)
    outers = [i for i in grad.hoisted if i.op == "outer"]
    assert {i.shape for i in outers} == {(12, 3)}  # [W_f..W_o] and [U_f..U_o]: 4 * 3 rows
    # one per-step matmul back into the state (through the fused U), none for the input
    assert [i.op for i in grad.body].count("matmul_t") == 1


def test_fused_gate_gradient_is_one_concat_not_pads():
    cell = optimized(lib_cell("gru", {}))
    grad = autodiff(cell)
    ops = [i.op for i in grad.body + grad.hoisted]
    assert "pad" not in ops
    concat = [i for i in grad.body if i.op == "concat"]
    assert len(concat) == 1 and concat[0].shape == (9,)
    # the adjoints of the gates are stored once, as slices of that concat's stack
    assert {c for _, c, _, _ in grad.views} == {concat[0].name}


def test_hoisted_concat_reuses_the_body_concat_stack():
    """For an LSTM the adjoint of W_x @ x equals that of U_x @ h: no second concat."""
    grad = autodiff(optimized(lib_cell("lstm", {})))
    assert not any(i.op == "concat" for i in grad.hoisted)


def test_overlapping_slices_fall_back_to_pads():
    cell = custom_cell("split")
    grad = autodiff(cell)
    assert any(i.op == "pad" for i in grad.body)


def test_unused_features_get_zeros_in_the_tiling_concat():
    text = """
    cell gap(x) {
      state h
      param W[3, X]
      z = W @ x + U @ h
      h' = tanh([z[0:1], z[2:3]] + V @ h)
    }
    """
    cdef = parse_text(text, "gap.rnn").cells[0]
    cell = lower_cell(cdef, {}, input_size=2, hidden=2)
    # z has 3 rows, bound by the slices; feature 1 is never read
    grad = verify_grad(autodiff(cell))
    assert any(i.op == "zeros" for i in grad.body)
    assert max(check_cell(cell).values()) < 1e-6


def test_grad_str_and_docstring():
    grad = autodiff(lib_cell("elman", {}))
    text = grad_str(grad)
    assert text.startswith("grad elman")
    assert "outer(%d_t4, %h)" in text
    failures, _ = doctest.testmod(autodiff_module, verbose=False)
    assert failures == 0


def test_verify_grad_catches_a_bad_shape():
    from dataclasses import replace

    grad = autodiff(lib_cell("elman", {}))
    bad = replace(grad, body=(replace(grad.body[0], shape=(7,)),) + grad.body[1:])
    with pytest.raises(AssertionError):
        verify_grad(bad)


# ----------------------------------------------- fixtures: cell IR -> backward IR

AD_FIXTURES = Path(__file__).parent / "fixtures" / "autodiff.txt"


@pytest.mark.parametrize("title,given_ir,expected", blocks(AD_FIXTURES), ids=lambda v: v[:40])
def test_autodiff_fixture(title, given_ir, expected):
    """The backward IR of fixture cells, as `grad_str` prints it: per-step body, what is
    saved and exported, and the weight gradients hoisted after the loop. The numbers are
    checked against finite differences. RNNC_UPDATE_FIXTURES=1 rewrites the expectations."""
    cell = verify_cell(parse_cell(given_ir))
    got = grad_str(verify_grad(autodiff(cell)))
    if os.environ.get("RNNC_UPDATE_FIXTURES"):
        AD_FIXTURES.write_text(AD_FIXTURES.read_text().replace(expected, got))
        return
    assert got == expected
    assert max(check_cell(cell).values()) < 1e-6


# ------------------------------------------- backward CSE: fixtures and properties

GRAD_CSE_FIXTURES = Path(__file__).parent / "fixtures" / "grad_cse.txt"


def _n_instrs(grad: CellGrad) -> int:
    return len(grad.body) + len(grad.hoisted) + len(grad.invariant)


def _assert_same_gradients(a: CellGrad, b: CellGrad, seed: int = 0, T: int = 3, B: int = 2):
    """The two backwards of one cell give bit-identical gradients (CSE reorders nothing)."""
    cell = a.cell
    params, xs, state0, w, v = _random_problem(cell, seed, T, B)
    for got, ref in zip(backward(b, params, xs, state0, w, v),
                        backward(a, params, xs, state0, w, v), strict=True):
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@pytest.mark.parametrize("title,given_ir,expected", blocks(GRAD_CSE_FIXTURES),
                         ids=lambda v: v[:40])
def test_grad_cse_fixture(title, given_ir, expected):
    """Cell IR -> its backward IR after `cse_grad` (what `autodiff` gives by default): a
    copy the gradient rules emit twice is computed once. Each fixture has a copy to drop,
    and the gradients are those of the backward without CSE, and of finite differences."""
    cell = verify_cell(parse_cell(given_ir))
    raw = verify_grad(autodiff(cell, simplify=False))
    grad = verify_grad(autodiff(cell))
    got = grad_str(grad)
    if os.environ.get("RNNC_UPDATE_FIXTURES"):
        GRAD_CSE_FIXTURES.write_text(GRAD_CSE_FIXTURES.read_text().replace(expected, got))
        return
    assert got == expected
    assert _n_instrs(grad) < _n_instrs(raw)
    _assert_same_gradients(raw, grad)
    assert max(check_cell(cell).values()) < 1e-6


_CELL_OPTIONS = {
    # input_gate only without coupled, which replaces the input gate (both are an error)
    "lstm": st.fixed_dictionaries({}, optional={
        "peepholes": st.booleans(), "coupled": st.booleans(), "proj": st.sampled_from([0, 2]),
        "cell_clip": st.sampled_from([0, 0.5])}).flatmap(
            lambda d: st.just(d) if d.get("coupled") else st.fixed_dictionaries(
                {k: st.just(v) for k, v in d.items()}, optional={"input_gate": st.booleans()})),
    "gru": st.fixed_dictionaries({}, optional={"reset": st.sampled_from(["before", "after"])}),
    "elman": st.just({}), "mgu": st.just({}), "indrnn": st.just({}),
    "jordan": st.just({"units": 3}),
}


@st.composite
def _any_cell(draw):
    if draw(st.booleans()):
        cell = custom_cell(draw(st.sampled_from(["odd", "split", "ln", "funcs"])))
    else:
        name = draw(st.sampled_from(sorted(_CELL_OPTIONS)))
        cell = lower_cell(library()[name], draw(_CELL_OPTIONS[name]), draw(st.integers(1, 3)),
                          draw(st.integers(2, 4)))
    return optimized(cell) if draw(st.booleans()) else cell


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_any_cell(), st.integers(0, 3))
def test_grad_cse_keeps_the_gradients_and_leaves_nothing_dead(cell, seed):
    """`cse_grad` on library and custom cells, with and without the forward passes: the
    gradients are bit-identical to the rules' own backward, it only drops instructions,
    running it again changes nothing, and every instruction left reaches an adjoint the
    backward hands on (which is why no dead-code pass follows it)."""
    raw = verify_grad(autodiff(cell, simplify=False))
    grad = verify_grad(autodiff(cell))
    assert {i.name for i in grad.body + grad.hoisted + grad.invariant} <= {
        i.name for i in raw.body + raw.hoisted + raw.invariant}
    _assert_same_gradients(raw, grad, seed)
    assert grad_str(cse_grad(grad)) == grad_str(grad)
    live = {d for pairs in (grad.state_grads, grad.input_grads, grad.partials,
                            grad.param_grads) for _, d in pairs}
    for ins in reversed(grad.body + grad.hoisted + grad.invariant):
        assert ins.name in live, f"%{ins.name} reaches no adjoint"
        live.update(ins.args)


def test_grad_cse_keeps_an_adjoint_it_hands_on():
    """A copy whose name is a state's adjoint stays (its readers are the driver's): only
    the later copies of unprotected values are dropped."""
    from dataclasses import replace

    grad = autodiff(lib_cell("elman", {}))
    (d_h,) = [i for i in grad.body if i.name == "d_h"]
    twin = replace(d_h, name="d_h_twin")
    body = tuple(i for i in grad.body if i is not d_h) + (twin, d_h)
    out = verify_grad(cse_grad(replace(grad, body=body)))
    assert [i.name for i in out.body][-2:] == ["d_h_twin", "d_h"]
    assert out.state_grads == (("h", "d_h"),)


def test_layernorm_backward_squares_once():
    """The layer-normalised LSTM's `xc * xc`, `hc * hc` and `cc * cc`: each gradient's
    `d * xc` once, not once per operand (two in the step, one in the hoisted section)."""
    from rnnc.compiler import optimize
    from rnnc.ir.lower import lower
    from rnnc.spec import load_spec

    spec = Path(__file__).parent.parent / "specs" / "layernorm_lstm.rnn"
    (layer,) = optimize(lower(load_spec(spec), base_dir=str(spec.parent))).model.layers
    raw, grad = autodiff(layer.cell, simplify=False), verify_grad(autodiff(layer.cell))
    assert (len(raw.body) - len(grad.body), len(raw.hoisted) - len(grad.hoisted)) == (2, 1)
    # b_x and b_h get the same gradient, bsum(d_z): both are handed on, so both stay
    handed_on = {d for _, d in grad.partials + grad.param_grads + grad.state_grads}
    for section in (grad.body, grad.hoisted):
        keys = [(i.op, tuple(sorted(i.args)), i.attrs) for i in section
                if i.name not in handed_on]
        assert len(keys) == len(set(keys))
