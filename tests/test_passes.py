"""Passes: fixture pairs (input IR -> expected IR) and numerical properties.

Each ``tests/fixtures/passes/<pass>.txt`` holds blocks::

    # title: what the case shows
    <input IR, in the text form of `rnnc ir`>
    # expect:
    <the IR after the pass>

``RNNC_UPDATE_FIXTURES=1 pytest tests/test_passes.py`` rewrites the expected parts
(review the diff).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fixture_blocks import blocks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnc.ir.interp import CompiledCell
from rnnc.ir.lower import library, lower_cell
from rnnc.ir.nodes import Cell
from rnnc.ir.parse import parse_cell
from rnnc.ir.passes import PIPELINE, get_pass
from rnnc.ir.printer import cell_str
from rnnc.ir.verify import verify_cell


FIXTURES = Path(__file__).parent / "fixtures" / "passes"


CASES = [(p.stem, *b) for p in sorted(FIXTURES.glob("*.txt")) for b in blocks(p)]


def test_every_pass_has_fixtures():
    assert {c[0] for c in CASES} == set(PIPELINE)


@pytest.mark.parametrize("name,title,given_ir,expected", CASES, ids=[c[1] for c in CASES])
def test_pass_fixture(name, title, given_ir, expected):
    before = verify_cell(parse_cell(given_ir))
    after = verify_cell(get_pass(name)(before), after=name)
    got = cell_str(after)
    if os.environ.get("RNNC_UPDATE_FIXTURES"):
        path = FIXTURES / f"{name}.txt"
        path.write_text(path.read_text().replace(expected, got))
        return
    assert got == expected
    # the pass keeps the numbers
    _assert_same_numbers(before, after)


def _run(cell: Cell, params, xs, reverse=False):
    lengths = np.full(xs.shape[0], xs.shape[1])
    outs, _, state = CompiledCell(cell).run(params, xs, reverse, lengths)
    return outs, state


def _random_params(cell: Cell, rng) -> dict:
    return {p.name: rng.normal(0, 0.5, p.shape) for p in cell.params}


def _assert_same_numbers(a: Cell, b: Cell, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    params = _random_params(a, rng)
    xs = rng.normal(size=(3, 5, a.inputs[0].size))
    (oa, sa), (ob, sb) = _run(a, params, xs), _run(b, params, xs)
    np.testing.assert_allclose(ob, oa, rtol=1e-12, atol=1e-12)
    for k in sa:
        np.testing.assert_allclose(sb[k], sa[k], rtol=1e-12, atol=1e-12)


_OPTIONS = {
    "lstm": st.fixed_dictionaries({}, optional={
        "peepholes": st.booleans(), "coupled": st.booleans(), "input_gate": st.booleans(),
        "output_gate": st.booleans(), "cell_clip": st.sampled_from([0, 0.5]),
        "proj": st.sampled_from([0, 2]), "gate_act": st.sampled_from(["sigmoid", "hard_sigmoid"]),
        "out_act": st.sampled_from(["tanh", "softsign", "identity"])}),
    "gru": st.fixed_dictionaries({}, optional={"reset": st.sampled_from(["before", "after"]),
                                               "act": st.sampled_from(["tanh", "relu"])}),
    "elman": st.fixed_dictionaries({}, optional={
        "act": st.sampled_from(["tanh", "relu", "softsign", "softplus", "sigmoid"])}),
    "mgu": st.just({}), "indrnn": st.just({}), "jordan": st.just({}),
}


@st.composite
def cells(draw):
    name = draw(st.sampled_from(sorted(_OPTIONS)))
    opts = dict(draw(_OPTIONS[name]))
    if opts.get("coupled"):  # it replaces the input gate: setting both is an error
        opts.pop("input_gate", None)
    return lower_cell(library()[name], opts, draw(st.integers(1, 4)), draw(st.integers(1, 4)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells(), st.sampled_from(PIPELINE), st.integers(0, 3))
def test_each_pass_keeps_numbers_and_is_idempotent(cell, name, seed):
    fn = get_pass(name)
    once = verify_cell(fn(cell), after=name)
    _assert_same_numbers(cell, once, seed)
    assert cell_str(fn(once)) == cell_str(once)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells(), st.integers(0, 3))
def test_whole_pipeline_keeps_numbers(cell, seed):
    out = cell
    for name in PIPELINE:
        out = verify_cell(get_pass(name)(out), after=name)
    _assert_same_numbers(cell, out, seed)
    # and with fusion or hoisting switched off
    for off in ("fuse_gates", "hoist_inputs"):
        alt = cell
        for name in PIPELINE:
            if name != off:
                alt = get_pass(name)(alt)
        _assert_same_numbers(out, alt, seed)


def test_gated_feedback_parameters_do_not_depend_on_the_passes():
    """A gated-feedback layer with no recurrent matmul U @ h (its state reached only through
    a concatenation) has no feedback to gate: it used to get gate weights all the same,
    dead code that fuse_gates fused with the next layer's live gates (both read h*), so the
    model had two extra, never-trained parameters unless fuse_gates was disabled -- and
    init_params drew different values for every other parameter."""
    from rnnc.compiler import build
    from rnnc.ir.lower import Sizes
    from rnnc.spec import parse_spec

    text = """cell c(x) {
  state h
  h' = tanh(W @ [x, h])
}
model m {
  input dense(features: 3)
  layer c(hidden: 2)
  layer elman(hidden: 2)
  head softmax(at: per_step, classes: 3)
  stack gated_feedback
}
"""

    def names(disable=()):
        (layer,) = build(parse_spec(text, "gf.rnn"), Sizes(3, 3), disable).model.layers
        return [p.name for p in layer.cell.params]

    got = names()
    assert not any(n.startswith(("layer1_wg_", "layer1_ug_")) for n in got), got
    assert "layer2_ug_layer1" in got and "layer2_U_from_layer1" in got
    for name in PIPELINE:
        assert names((name,)) == got, name


def _sum_terms(cell: Cell) -> dict[str, Counter]:
    """Each ``add``'s terms: the values, not themselves sums, that it adds up."""
    defs = {i.name: i for i in cell.instrs}

    def terms(name: str) -> Counter:
        ins = defs.get(name)
        if ins is None or ins.op != "add":
            return Counter([name])
        return terms(ins.args[0]) + terms(ins.args[1])

    return {i.name: terms(i.name) for i in cell.instrs if i.op == "add"}


@pytest.mark.parametrize("spec", ["layernorm_lstm.rnn", "gated_feedback.rnn"])
def test_reassociate_gives_no_value_other_terms(spec):
    """The layer-normalised LSTM's ``z = nx + nh`` is regrouped as ``(nx + b_h) + U h``
    terms: the partial sum ``nx + b_h`` used to be named ``nh`` (in `rnnc ir` and the
    generated docstrings), which it is not; in a gated-feedback cell ``layer1_t2`` (the
    gated sum of the layers' feedback) was reused for ``layer1_t1 + layer1_b + ...``. A
    name kept after reassociate sums the same terms as before it; a regrouped partial sum
    that matches no inner sum gets a name no value had (``t64``, ``layer1_t5``)."""
    from rnnc.compiler import optimize
    from rnnc.ir.lower import lower
    from rnnc.spec import load_spec

    path = Path(__file__).parent.parent / "specs" / spec
    program = lower(load_spec(path), base_dir=str(path.parent))
    for layer in optimize(program, until="fuse_gates").model.layers:
        after = get_pass("reassociate")(layer.cell)
        old, new = _sum_terms(layer.cell), _sum_terms(after)
        names = {i.name for i in layer.cell.instrs}
        assert new != old  # something was regrouped
        for name, terms in new.items():
            if name in names:
                assert terms == old.get(name), name
    if spec == "layernorm_lstm.rnn":
        assert "nx" in new and "z" in new and "nh" not in new
