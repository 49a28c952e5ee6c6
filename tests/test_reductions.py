"""Feature reductions (sum, mean) and the element-wise functions added with them.

- lowering: a reduction is a width-1 ``sumf`` (a mean divides it by the width), broadcast
  against a full-width value by one explicit ``expand``; a width not known when the
  reduction is lowered is settled at the end of the cell;
- every function's derivative written in its output equals the derivative of its
  forward formula (central differences, over each function's domain);
- the passes keep the numbers of cells with reductions (hypothesis), CSE shares a
  repeated mean, hoisting takes the reductions of hoisted values out of the loop, gate
  fusion leaves one mean per gate's own slice;
- the layer-normalised LSTM of ``specs/layernorm_lstm.rnn`` against PyTorch
  (``torch.nn.functional.layer_norm``): outputs, final states, loss and every gradient,
  from the NumPy and the JAX backend.

Errors (a constant, a matrix, two arguments, a width nothing binds, a reduction as a
state) are fixtures in ``tests/fixtures/bad``; gradients of both backends against finite
differences and against each other are cases of ``tests/test_backend_matrix.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnc.errors import SpecError
from rnnc.gradcheck import load_module, program_from_text, source_for
from rnnc.ir.interp import CompiledCell
from rnnc.ir.lower import REDUCTIONS, lower_cell
from rnnc.ir.nodes import Cell
from rnnc.ir.ops import ACT_FORWARD, ACT_GRAD, ACT_MATH, ACTIVATIONS
from rnnc.ir.passes import PIPELINE, get_pass
from rnnc.ir.printer import cell_str
from rnnc.ir.verify import verify_cell
from rnnc.spec.text import parse_text


ROOT = Path(__file__).resolve().parents[1]
LN_SPEC = ROOT / "specs" / "layernorm_lstm.rnn"


def cell_of(text: str, input_size: int = 3, hidden: int = 4, **options) -> Cell:
    (cdef,) = parse_text(text, "cell.rnn").cells
    return verify_cell(lower_cell(cdef, options, input_size=input_size, hidden=hidden))


def ops(cell: Cell) -> list[str]:
    return [i.op for i in cell.instrs]


def run(cell: Cell, params: dict, xs: np.ndarray):
    lengths = np.full(xs.shape[0], xs.shape[1])
    outs, _, state = CompiledCell(cell).run(params, xs, False, lengths)
    return outs, state


# ------------------------------------------------------------------ lowering


def test_mean_is_a_sum_divided_by_the_width_and_broadcasts_by_one_expand():
    cell = cell_of("cell c(x) {\n  state h\n  param U[hidden, hidden]\n"
                   "  h' = tanh(U @ h - mean(U @ h))\n}\n")
    defs = {i.name: i for i in cell.instrs}
    (s,) = [i for i in cell.instrs if i.op == "sumf"]
    (e,) = [i for i in cell.instrs if i.op == "expand"]
    (d,) = [i for i in cell.instrs if i.op == "div"]
    assert s.shape == (1,) and d.shape == (1,) and d.args[0] == s.name
    assert defs[d.args[1]].op == "const" and defs[d.args[1]].attr("value") == 4.0
    assert e.args == (d.name,) and e.attr("n") == 4 and e.shape == (4,)
    assert ops(cell).count("sub") == 1


def test_a_width_bound_after_the_reduction_is_settled_at_the_end_of_the_cell():
    """mean(W @ x) before anything binds W's rows: the divisor and the expand's n are the
    width that the later `+ U @ h` (a state of 5) gives it."""
    cell = cell_of("cell c(x) {\n  state h\n  z = W @ x\n  m = g * (z - mean(z))\n"
                   "  h' = tanh(m + U @ h)\n}\n", hidden=5)
    consts = [i.attr("value") for i in cell.instrs if i.op == "const"]
    assert consts == [5.0]
    assert [i.attr("n") for i in cell.instrs if i.op == "expand"] == [5]
    assert {p.name: p.shape for p in cell.params}["W"] == (5, 3)
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(size=p.shape) for p in cell.params}
    xs = rng.normal(size=(2, 3, 3))
    outs, _ = run(cell, params, xs)
    h = np.zeros((2, 5))
    for t in range(3):
        z = xs[:, t] @ params["W"].T
        h = np.tanh(params["g"] * (z - z.mean(-1, keepdims=True)) + h @ params["U"].T)
        np.testing.assert_allclose(outs[:, t], h, rtol=1e-12, atol=1e-12)


def test_width_one_values_stay_width_one_and_only_full_widths_expand_them():
    """A reduction with a constant or another reduction is still a per-row scalar (no
    expand, a (1,) result); with a full-width value, once, where it is used."""
    cell = cell_of("cell c(x) {\n  state h, s[1]\n  r = sqrt(mean(h * h) + 1.0) * 2 - sum(x)\n"
                   "  h' = tanh(W @ x + U @ h) / r\n  s' = r + s\n}\n")
    defs = {i.name: i for i in cell.instrs}
    assert defs["r"].shape == (1,)
    assert [i.args for i in cell.instrs if i.op == "expand"] == [("r",)]
    # s is a state of size 1, not a reduction: r + s is an ordinary width-1 sum
    (nxt,) = [v for s, v in cell.next_state if s == "s"]
    assert defs[nxt].op == "add" and defs[nxt].shape == (1,)


@pytest.mark.parametrize("one", ["s", "x[1:2]", "(k @ h)", "g1"])
def test_every_value_of_width_one_broadcasts_like_a_reduction(one):
    """A state of size 1 (or a slice of one feature, a 1-row matmul, a declared size-1
    parameter) times a full-width value: the width-1 value was unified with the other
    side, so `tanh(W @ x + U @ h) * s` made h' of size 1 and failed ('h' has shape (1,)
    but state h is (4,)'). It now broadcasts, as sum(v) and mean(v) do."""
    # only the parameter this case reads is declared (an unread one is an error)
    decl = {"g1": "  param g1[1]\n", "(k @ h)": "  param k[1, hidden]\n"}.get(one, "")
    cell = cell_of("cell c(x) {\n  state h, s[1]\n" + decl +
                   f"  h' = tanh(W @ x + U @ h) * {one}\n  s' = sigmoid(sum(h))\n}}\n")
    shapes = {p.name: p.shape for p in cell.params}
    assert shapes["W"] == (4, 3) and shapes["U"] == (4, 4)
    (e,) = [i for i in cell.instrs if i.op == "expand"]
    assert e.attr("n") == 4
    rng = np.random.default_rng(1)
    params = {p.name: rng.normal(size=p.shape) for p in cell.params}
    xs = rng.normal(size=(2, 3, 3))
    outs, _ = run(cell, params, xs)
    h, s = np.zeros((2, 4)), np.zeros((2, 1))
    for t in range(3):
        x = xs[:, t]
        w1 = {"s": s, "x[1:2]": x[:, 1:2], "(k @ h)": h @ params.get("k", np.zeros((1, 4))).T,
              "g1": params.get("g1")}[one]
        h, s = np.tanh(x @ params["W"].T + h @ params["U"].T) * w1, \
            1 / (1 + np.exp(-h.sum(-1, keepdims=True)))
        np.testing.assert_allclose(outs[:, t], h, rtol=1e-12, atol=1e-12)


def test_a_width_one_value_and_a_width_nothing_binds_are_one_width():
    """A width-1 value (W @ x, W declared [hidden, X], hidden 1) with a value whose width
    nothing else binds (U @ y: z's width is no state's): the two are one width, as they
    were before width-1 values broadcast (specs/lib/jordan.rnn with hidden 1), not an
    unbound shape; and an expand that turns out to be to width 1 is left out."""
    cell = cell_of("cell c(x) {\n  state y\n  param W[hidden, X]\n  z = act(W @ x + U @ y + b)\n"
                   "  y' = tanh(V @ z + y * v)\n}\n", hidden=1, act="tanh")
    assert {p.name: p.shape for p in cell.params} == {
        "W": (1, 3), "U": (1, 1), "b": (1,), "V": (1, 1), "v": (1,)}
    assert "expand" not in ops(cell)


@pytest.mark.parametrize("one,other", [("s", "k"), ("s", "mean(h)"), ("k", "x[0:1]"),
                                       ("(K @ h)", "s")])
@pytest.mark.parametrize("form", ["({a} * {b}) * p", "{a} * ({b} * p)", "({a} * p) * {b}",
                                  "p * ({a} * {b})", "({b} * {a}) * p", "{b} * (p * {a})",
                                  "({a} + {b}) * p", "p * ({b} + {a})"])
def test_width_one_operands_pin_an_unbound_width_in_any_order(one, other, form):
    """A width-1 value known as such (a state or parameter of size 1, a slice, a 1-row
    matmul) and a value whose width nothing binds (p) are one width, however the product
    is grouped: `(s * k) * p` called s * k a reduction, which pins nothing, and failed
    with 'cannot infer the shape of parameter 'p'' where `s * (k * p)` made p of size 1;
    `(s * mean(h)) * p` likewise."""
    expr = form.format(a=one, b=other)
    decl = "".join(d for n, d in (("k", "  param k[1]\n"), ("K", "  param K[1, hidden]\n"))
                   if n in expr.replace("[0:1]", ""))
    cell = cell_of("cell c(x) {\n  state h, s[1]\n" + decl + f"  y = {expr}\n"
                   "  h' = tanh(W @ x + U @ h)\n  s' = sum(y) + s\n}\n")
    shapes = {q.name: q.shape for q in cell.params}
    assert shapes["p"] == (1,)
    assert "expand" not in ops(cell)
    rng = np.random.default_rng(3)
    params = {q.name: rng.normal(size=q.shape) for q in cell.params}
    xs = rng.normal(size=(2, 3, 3))
    _, state = run(cell, params, xs)
    h, s = np.zeros((2, 4)), np.zeros((2, 1))
    for t in range(3):
        x = xs[:, t]
        val = {"s": s, "k": params.get("k"), "x[0:1]": x[:, 0:1],
               "mean(h)": h.mean(-1, keepdims=True),
               "(K @ h)": h @ params.get("K", np.zeros((1, 4))).T}
        a, b = val[one], val[other]
        y = (a + b) * params["p"] if "+" in form else a * b * params["p"]
        h, s = np.tanh(x @ params["W"].T + h @ params["U"].T), y.sum(-1, keepdims=True) + s
    np.testing.assert_allclose(state["s"], s, rtol=1e-12, atol=1e-12)


def test_reductions_alone_still_leave_an_unbound_width_unbound():
    """Only reductions (no width of their own) in a product with p leave p's width open,
    in either grouping: an error that asks for its declaration."""
    for expr in ("(mean(h) * sum(h)) * p", "mean(h) * (sum(h) * p)", "p * (2 - mean(h))"):
        with pytest.raises(Exception, match="cannot infer the shape of parameter 'p'"):
            cell_of("cell c(x) {\n  state h, s[1]\n" + f"  y = {expr}\n"
                    "  h' = tanh(W @ x + U @ h)\n  s' = sum(y) + s\n}\n")


def test_a_parameter_read_before_its_reduction_settles_it_has_one_width():
    """`zc = z - mean(z)` with z a parameter: reading z, then mean(z), settled z twice (two
    widths), the mean's width stayed unbound and `rnnc check` failed with an
    AssertionError traceback (found by tests/test_fuzz_spec.py deleting `zx = W @ x` from
    specs/layernorm_lstm.rnn). z is one vector now, of the width h' gives it."""
    cell = cell_of("cell c(x) {\n  state h\n  zc = z - mean(z)\n"
                   "  h' = tanh(W @ x + U @ h + zc)\n}\n", hidden=5)
    assert {p.name: p.shape for p in cell.params}["z"] == (5,)
    assert [i.attr("value") for i in cell.instrs if i.op == "const"] == [5.0]
    rng = np.random.default_rng(2)
    params = {p.name: rng.normal(size=p.shape) for p in cell.params}
    xs = rng.normal(size=(2, 3, 3))
    outs, _ = run(cell, params, xs)
    h = np.zeros((2, 5))
    z = params["z"]
    for t in range(3):
        h = np.tanh(xs[:, t] @ params["W"].T + h @ params["U"].T + (z - z.mean()))
        np.testing.assert_allclose(outs[:, t], h, rtol=1e-12, atol=1e-12)


def test_reductions_are_not_activations():
    """sum and mean reduce; they are not element-wise, so no option may name them as an
    activation, and a name of theirs cannot be a parameter."""
    assert not set(REDUCTIONS) & set(ACTIVATIONS)
    text = "cell c(x) {\n  state h\n  h' = tanh(W @ x + U @ h) * mean\n}\n"
    with pytest.raises(SpecError, match="'mean' is a function: call it as mean"):
        cell_of(text)


def test_functions_of_constants_fold_at_compile_time():
    cell = cell_of("cell c(x) {\n  state h\n  h' = tanh(W @ x + U @ h) * sqrt(4) + "
                   "(elu(-1) + log(exp(2)) + rsqrt(4) + log_sigmoid(0))\n}\n")
    values = [i.attr("value") for i in cell.instrs if i.op == "const"]
    assert values == pytest.approx([2.0, np.expm1(-1) + 2.0 + 0.5 + np.log(0.5)], rel=1e-15)
    assert [i.attr("fn") for i in cell.instrs if i.op == "act"] == ["tanh"]  # the rest folded


def test_a_function_of_a_constant_outside_its_domain_is_an_error():
    with pytest.raises(SpecError, match="overflows"):
        cell_of("cell c(x) {\n  state h\n  h' = tanh(W @ x + U @ h) * log(0)\n}\n")


# ---------------------------------------------------------- derivatives in y

DOMAINS = {"log": (1e-2, 10.0), "sqrt": (1e-2, 10.0), "rsqrt": (1e-2, 10.0)}


@pytest.mark.parametrize("fn", ACTIVATIONS)
@settings(max_examples=25, deadline=None)
@given(u=st.floats(0.0, 1.0), g=st.floats(-2.0, 2.0))
def test_derivative_written_in_the_output_is_the_derivative(fn, u, g):
    lo, hi = DOMAINS.get(fn, (-4.0, 4.0))
    x = lo + (hi - lo) * u
    if fn in ("relu", "elu", "hard_sigmoid") and min(abs(x), abs(x - 2.5), abs(x + 2.5)) < 1e-3:
        return  # a kink (relu, elu at 0; hard_sigmoid at +-2.5)

    def f(v):
        return eval(ACT_FORWARD[fn].format(xp="np", a="v"), {"np": np, "v": v})  # noqa: S307

    y = f(np.float64(x))
    got = eval(ACT_GRAD[fn].format(xp="np", y="y", g="g"), {"np": np, "y": y, "g": g})  # noqa: S307
    eps = 1e-6 * max(1.0, abs(x))
    ref = g * (f(np.float64(x + eps)) - f(np.float64(x - eps))) / (2 * eps)
    assert float(got) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)


def test_every_function_has_a_forward_a_derivative_and_its_math():
    assert set(ACT_FORWARD) == set(ACT_GRAD) == set(ACT_MATH) == set(ACTIVATIONS)


def test_elu_does_not_overflow_on_the_branch_it_does_not_take():
    with np.errstate(all="raise"):
        y = eval(ACT_FORWARD["elu"].format(xp="np", a="a"),  # noqa: S307
                 {"np": np, "a": np.array([-800.0, 0.0, 800.0])})
    np.testing.assert_array_equal(y, [-1.0, 0.0, 800.0])


# --------------------------------------------------------------------- passes

LN_TEMPLATE = """cell c(x) {{
  state h, c[2]
  z = W @ x
  zc = z - {red}(z)
  u = {act}(g * zc / sqrt(mean(zc * zc) + 0.5) + U @ h + b)
  {gated}
  h' = {act}(u - {red}(u) * q + sum(c))
  c' = mean(h') + c * 0.5
}}
"""


@st.composite
def ln_cells(draw):
    act = draw(st.sampled_from(["tanh", "elu", "log_sigmoid", "sigmoid"]))
    red = draw(st.sampled_from(REDUCTIONS))
    # the same matrix product twice (CSE) or two gates' products of x (gate fusion)
    gated = draw(st.sampled_from([
        "q = sigmoid(W2 @ x - mean(W2 @ x))",
        "q = sigmoid(V @ x) * softplus(V2 @ x - mean(V2 @ x))",
        "q = 1.5",
    ]))
    text = LN_TEMPLATE.format(act=act, red=red, gated=gated)
    return cell_of(text, draw(st.integers(1, 4)), draw(st.integers(1, 4)))


def _same_numbers(a: Cell, b: Cell, seed: int) -> None:
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(0, 0.5, p.shape) for p in a.params}
    xs = rng.normal(size=(3, 4, a.inputs[0].size))
    (oa, sa), (ob, sb) = run(a, params, xs), run(b, params, xs)
    np.testing.assert_allclose(ob, oa, rtol=1e-12, atol=1e-12)
    for k in sa:
        np.testing.assert_allclose(sb[k], sa[k], rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ln_cells(), st.sampled_from(PIPELINE), st.integers(0, 3))
def test_each_pass_keeps_the_numbers_of_cells_with_reductions(cell, name, seed):
    fn = get_pass(name)
    once = verify_cell(fn(cell), after=name)
    _same_numbers(cell, once, seed)
    assert cell_str(fn(once)) == cell_str(once)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ln_cells(), st.integers(0, 3))
def test_the_pipeline_keeps_the_numbers_of_cells_with_reductions(cell, seed):
    out = cell
    for name in PIPELINE:
        out = verify_cell(get_pass(name)(out), after=name)
    _same_numbers(cell, out, seed)


def optimized(cell: Cell) -> Cell:
    for name in PIPELINE:
        cell = verify_cell(get_pass(name)(cell), after=name)
    return cell


def test_reductions_of_hoisted_values_leave_the_loop_and_a_repeated_mean_is_shared():
    cell = optimized(cell_of(LN_TEMPLATE.format(
        act="tanh", red="mean", gated="q = sigmoid(W2 @ x - mean(W2 @ x))")))
    hoisted = [i.op for i in cell.hoisted]
    # mean(z), mean(zc * zc) and mean(W2 @ x) of the input projections: not per step
    assert hoisted.count("sumf") == 3 and hoisted.count("expand") == 3
    # mean(W2 @ x) twice in the source, once in the IR (CSE); W @ x and W2 @ x fused
    assert [i.op for i in cell.invariant].count("pconcat") == 1
    assert sum(i.op == "sumf" for i in cell.instrs) == 3 + 3  # + mean(u), sum(c), mean(h')
    # per step: the reductions of state-dependent values only
    assert [i.op for i in cell.body].count("sumf") == 3


def test_gate_fusion_keeps_one_reduction_per_gate():
    """Two gates normalised each on its own: fusion makes one product and two slices, and
    each gate's mean still reduces its own slice only."""
    text = ("cell c(x) {\n  state h\n  a = W_a @ x\n  b = W_b @ x\n"
            "  h' = tanh(a - mean(a) + U @ h) * sigmoid(b - mean(b))\n}\n")
    raw = cell_of(text)
    cell = optimized(raw)
    assert [i.op for i in cell.invariant].count("pconcat") == 1
    sums = [i for i in cell.instrs if i.op == "sumf"]
    defs = {i.name: i for i in cell.instrs}
    assert len(sums) == 2 and all(defs[s.args[0]].op == "slice" for s in sums)
    assert all(s.shape == (1,) for s in sums)
    _same_numbers(raw, cell, 0)


# ------------------------------------------------------------- PyTorch oracle

B, T, F, H = 3, 5, 4, 3


def ln_model_text(backend_head: int = H) -> str:
    cell = LN_SPEC.read_text(encoding="utf-8").split("\nmodel ")[0]
    return (cell + f"\nmodel m {{\n  input dense(features: {F})\n  layer ln_lstm(hidden: {H})\n"
            f"  head linear(at: per_step, size: {backend_head})\n}}\n")


def torch_ln_lstm(torch, p, x, h, c, eps=1e-5):
    """Ba et al.'s layer-normalised LSTM written with torch.nn.functional.layer_norm."""
    ln = torch.nn.functional.layer_norm
    outs = []
    for t in range(x.shape[1]):
        z = ln(x[:, t] @ p["W"].T, (4 * H,), p["g_x"], p["b_x"], eps) + ln(
            h @ p["U"].T, (4 * H,), p["g_h"], p["b_h"], eps)
        i, f, g, o = z.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, (H,), p["g_c"], p["b_c"], eps))
        outs.append(h)
    return torch.stack(outs, dim=1), h, c


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_layernorm_lstm_matches_pytorch(backend):
    torch = pytest.importorskip("torch")
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    m = load_module(source_for(program_from_text(ln_model_text()), backend), "ln_oracle")
    rng = np.random.default_rng(3)
    shapes = {k.split(".", 1)[1]: v for k, v in m.PARAM_SHAPES.items() if k.startswith("layer1.")}
    assert shapes == {"W": (4 * H, F), "U": (4 * H, H), "g_x": (4 * H,), "b_x": (4 * H,),
                      "g_h": (4 * H,), "b_h": (4 * H,), "g_c": (H,), "b_c": (H,)}
    tp = {k: torch.tensor(rng.normal(scale=0.7, size=s) + (1.0 if k[0] == "g" else 0.0),
                          requires_grad=True) for k, s in shapes.items()}
    x = torch.tensor(rng.normal(size=(B, T, F)), requires_grad=True)
    h0 = torch.tensor(rng.normal(size=(B, H)) * 0.5, requires_grad=True)
    c0 = torch.tensor(rng.normal(size=(B, H)) * 0.5, requires_grad=True)
    target = rng.normal(size=(B, T, H))
    out, h, c = torch_ln_lstm(torch, tp, x, h0, c0)
    loss = ((out - torch.tensor(target)) ** 2).mean()
    loss.backward()

    params = {f"layer1.{k}": v.detach().numpy().copy() for k, v in tp.items()}
    params["head.W"], params["head.b"] = np.eye(H), np.zeros(H)
    state = {"layer1.h": h0.detach().numpy(), "layer1.c": c0.detach().numpy()}
    xs = x.detach().numpy()
    ys, final = m.forward(params, xs, state)
    tol = dict(rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(ys), out.detach().numpy(), **tol)
    np.testing.assert_allclose(np.asarray(final["layer1.h"]), h.detach().numpy(), **tol)
    np.testing.assert_allclose(np.asarray(final["layer1.c"]), c.detach().numpy(), **tol)
    got_loss, grads, _ = m.loss_and_grad(params, xs, target, state, wrt_inputs=True)
    assert float(got_loss) == pytest.approx(loss.item(), rel=1e-12)
    for k, v in tp.items():
        np.testing.assert_allclose(np.asarray(grads[f"layer1.{k}"]), v.grad.numpy(), **tol,
                                   err_msg=k)
    np.testing.assert_allclose(np.asarray(grads["xs"]), x.grad.numpy(), **tol)
    np.testing.assert_allclose(np.asarray(grads["state/layer1.h"]), h0.grad.numpy(), **tol)
    np.testing.assert_allclose(np.asarray(grads["state/layer1.c"]), c0.grad.numpy(), **tol)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_stepping_the_layernorm_lstm_gives_forward(backend):
    """step (and, in JAX, step on prepare_step's parameters) one step at a time gives
    forward's outputs and final state: the reductions of the hoisted input projection are
    computed per step there."""
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    m = load_module(source_for(program_from_text(ln_model_text()), backend), "ln_step")
    params = m.init_params(2, "float64")
    rng = np.random.default_rng(4)
    params = {k: np.asarray(v) + rng.normal(scale=0.3, size=np.shape(v)) for k, v in
              params.items()}
    xs = rng.normal(size=(2, 4, F))
    ys, final = m.forward(params, xs)
    stepped = [params] + ([m.prepare_step(params)] if hasattr(m, "prepare_step") else [])
    for p in stepped:
        state = None
        for t in range(xs.shape[1]):
            y, state = m.step(p, xs[:, t], state)
            np.testing.assert_allclose(np.asarray(y), np.asarray(ys)[:, t], rtol=1e-12,
                                       atol=1e-12)
        for k in final:
            np.testing.assert_allclose(np.asarray(state[k]), np.asarray(final[k]), rtol=1e-12,
                                       atol=1e-12)
