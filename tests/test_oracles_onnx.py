"""Generated NumPy modules against ONNX's reference operators (onnx.reference).

ONNX's GRU with linear_before_reset=0 is rnnc's gru with reset "before" (the
reset gate multiplies the state before the recurrent matmul); ONNX's LSTM with
its P input is rnnc's lstm with peepholes (p_i and p_f read c_{t-1}, p_o reads
c_t). The ONNX weights (gates z, r, h and i, o, f, c; biases Wb + Rb) are mapped
onto the spec's parameters and the hidden states must agree in float64.
"""

import numpy as np
import pytest

from rnnc.gradcheck import load_module, program_from_text, source_for


onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402


B, T, F, H = 3, 6, 4, 5


def module(cell: str, bidirectional: bool = False):
    width = 2 * H if bidirectional else H
    direction = " direction bidirectional" if bidirectional else ""
    text = (f"model m {{\n  input dense(features: {F})\n  layer {cell}{direction}\n"
            f"  head linear(at: per_step, size: {width})\n}}\n")
    return load_module(source_for(program_from_text(text)), "onnx_oracle")


def run_onnx(op: str, inputs: dict[str, np.ndarray], n_gates: int, **attrs):
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    present = [n if n in inputs else "" for n in names]
    while present and present[-1] == "":
        present.pop()
    node = helper.make_node(op, present, ["Y", "Y_h"], hidden_size=H, **attrs)
    dirs = inputs["W"].shape[0]
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.DOUBLE, list(inputs[n].shape))
         for n in present if n],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [T, dirs, B, H]),
         helper.make_tensor_value_info("Y_h", TensorProto.DOUBLE, [dirs, B, H])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return ReferenceEvaluator(model).run(None, {n: inputs[n] for n in present if n})


def identity_head(params, width):
    params["head.W"] = np.eye(width)
    params["head.b"] = np.zeros(width)
    return params


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_gru_linear_before_reset_0_is_reset_before(bidirectional):
    m = module(f'gru(hidden: {H}, reset: "before")', bidirectional)
    rng = np.random.default_rng(0)
    dirs = 2 if bidirectional else 1
    W = rng.uniform(-0.7, 0.7, size=(dirs, 3 * H, F))
    R = rng.uniform(-0.7, 0.7, size=(dirs, 3 * H, H))
    Bias = rng.uniform(-0.5, 0.5, size=(dirs, 6 * H))
    h0 = rng.normal(size=(dirs, B, H)) * 0.5
    x = rng.normal(size=(T, B, F))
    Y, Y_h = run_onnx("GRU", {"X": x, "W": W, "R": R, "B": Bias, "initial_h": h0}, 3,
                      linear_before_reset=0,
                      direction="bidirectional" if bidirectional else "forward")
    params, state = {}, {}
    for d, name in enumerate(["fwd", "bwd"][:dirs]):
        pre = f"layer1.{name}." if bidirectional else "layer1."
        for j, g in enumerate("zrn"):  # ONNX gate order z, r, h
            rows = slice(j * H, (j + 1) * H)
            params[pre + "W_" + g] = W[d, rows]
            params[pre + "U_" + g] = R[d, rows]
            params[pre + "b_" + g] = Bias[d, rows] + Bias[d, 3 * H:][rows]
        state[pre + "h"] = h0[d]
    identity_head(params, dirs * H)
    assert set(params) == set(m.PARAM_SHAPES)
    ys, final = m.forward(params, np.swapaxes(x, 0, 1), state)
    want = np.concatenate([Y[:, d] for d in range(dirs)], axis=-1)  # (T, B, dirs * H)
    np.testing.assert_allclose(ys, np.swapaxes(want, 0, 1), rtol=0, atol=1e-12)
    for d, name in enumerate(["fwd", "bwd"][:dirs]):
        pre = f"layer1.{name}." if bidirectional else "layer1."
        np.testing.assert_allclose(final[pre + "h"], Y_h[d], rtol=0, atol=1e-12)


def test_lstm_with_peepholes():
    m = module(f"lstm(hidden: {H}, peepholes: true)")
    rng = np.random.default_rng(1)
    W = rng.uniform(-0.7, 0.7, size=(1, 4 * H, F))
    R = rng.uniform(-0.7, 0.7, size=(1, 4 * H, H))
    Bias = rng.uniform(-0.5, 0.5, size=(1, 8 * H))
    P = rng.uniform(-0.8, 0.8, size=(1, 3 * H))
    h0, c0 = rng.normal(size=(1, B, H)) * 0.5, rng.normal(size=(1, B, H)) * 0.5
    x = rng.normal(size=(T, B, F))
    Y, Y_h = run_onnx("LSTM", {"X": x, "W": W, "R": R, "B": Bias, "initial_h": h0,
                               "initial_c": c0, "P": P}, 4)
    params = {}
    for j, g in enumerate("iofg"):  # ONNX gate order i, o, f, c (rnnc's g)
        rows = slice(j * H, (j + 1) * H)
        params["layer1.W_" + g] = W[0, rows]
        params["layer1.U_" + g] = R[0, rows]
        params["layer1.b_" + g] = Bias[0, rows] + Bias[0, 4 * H:][rows]
    for j, g in enumerate("iof"):  # peepholes p_i, p_o, p_f
        params["layer1.p_" + g] = P[0, j * H:(j + 1) * H]
    identity_head(params, H)
    assert set(params) == set(m.PARAM_SHAPES)
    state = {"layer1.h": h0[0], "layer1.c": c0[0]}
    ys, final = m.forward(params, np.swapaxes(x, 0, 1), state)
    np.testing.assert_allclose(ys, np.swapaxes(Y[:, 0], 0, 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(final["layer1.h"], Y_h[0], rtol=0, atol=1e-12)
