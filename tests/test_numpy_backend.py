"""The NumPy backend: generated modules against finite differences and the contract.

Gradient checks run in float64 on tiny models (T=5, B=3) over the library cells
with their options, stacking, both directions, residual layers, every input
encoding and head, padding (lengths), resets and truncated-BPTT windows, with
and without the IR passes. Other tests check the module contract: it imports
without rnnc, is ruff-clean and deterministic, keeps float32 in float32, and
its entry points agree with each other.
"""

import ast
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnc.gradcheck import gradcheck, load_module, module_for, program_from_text, source_for


TOL = 1e-6


@functools.cache
def source_of(text: str, passes: bool = True, n_in: int = 5, n_out: int = 4) -> str:
    return source_for(program_from_text(text, n_in, n_out, passes))


@functools.cache
def module_of(text: str, passes: bool = True, n_in: int = 5, n_out: int = 4):
    return load_module(source_of(text, passes, n_in, n_out), "rnnc_test_module")


def spec(layers: str, inp: str = "onehot(vocab: 5)", head: str = "softmax per_step",
         train: str = "") -> str:
    body = "\n".join(f"  layer {la}" for la in layers.split(";"))
    text = f"model m {{\n  input {inp}\n{body}\n  head {head}\n}}\n"
    if train:
        text += f'train {{\n  data text(path: "x.txt")\n  {train}\n}}\n'
    return text


# ------------------------------------------------------------------ gradcheck

CELLS = [
    "elman(hidden: 3)",
    "elman(hidden: 3, act: relu)",
    "gru(hidden: 3)",
    "gru(hidden: 3, reset: \"before\")",
    "lstm(hidden: 3)",
    "lstm(hidden: 3, peepholes: true, proj: 2)",
    "lstm(hidden: 3, coupled: true, cell_clip: 0.5, gate_act: hard_sigmoid)",
    "lstm(hidden: 3, cell_act: softsign, out_act: softplus, forget_gate: false)",
    "mgu(hidden: 3)",
    "jordan(hidden: 3, units: 4)",
    "indrnn(hidden: 3)",
]

MODELS = {
    "stack2": spec("lstm(hidden: 3); gru(hidden: 3)"),
    "bidir-concat": spec("gru(hidden: 3) direction bidirectional; elman(hidden: 2)"),
    "bidir-sum": spec("lstm(hidden: 3) direction bidirectional merge sum"),
    "backward": spec("mgu(hidden: 3) direction backward"),
    "residual": spec("elman(hidden: 3); gru(hidden: 3) residual true"),
    "embedding": spec("gru(hidden: 3)", inp="embedding(vocab: 5, dim: 2)"),
    "dense-linear": spec("lstm(hidden: 3)", inp="dense(features: 2)", head="linear per_step"),
    "softmax-last": spec("gru(hidden: 3); elman(hidden: 3)", head="softmax last"),
    "linear-last": spec("lstm(hidden: 3) direction bidirectional", inp="dense(features: 2)",
                        head="linear last"),
    "tbptt-disjoint": spec("lstm(hidden: 3); elman(hidden: 2)", train="bptt k1 2"),
    "tbptt-overlap": spec("gru(hidden: 3)", inp="dense(features: 2)", train="bptt k1 2 k2 3"),
    "tbptt-last": spec("mgu(hidden: 3)", head="softmax last", train="bptt k1 2 k2 4"),
    "tbptt-bidir": spec("lstm(hidden: 3) direction bidirectional; gru(hidden: 2) direction "
                        "backward", train="bptt k1 2 k2 3"),
    "gated-feedback": spec("elman(hidden: 3); gru(hidden: 2)").replace(
        "  head", "  stack gated_feedback\n  head"),
    "tbptt-bwd-fwd": spec("elman(hidden: 2) direction backward; lstm(hidden: 2) direction "
                          "bidirectional; elman(hidden: 2)", head="linear last",
                          inp="dense(features: 2)", train="bptt k1 2 k2 3"),
}


def check(text: str, passes: bool, resets: bool, seed: int = 0, max_entries: int = 5) -> None:
    module = module_of(text, passes)
    rows = gradcheck(module, seed=seed, T=5, B=3, lengths=True, resets=resets,
                     max_entries=max_entries)
    bad = [(n, e) for n, e in rows if not e <= TOL]
    assert not bad, bad
    names = {n for n, _ in rows}
    assert set(module.PARAM_SHAPES) <= names
    assert {"state/" + s for s in module.STATE_SHAPES} <= names


@pytest.mark.parametrize("passes", [True, False], ids=["passes", "raw"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_library_cells(cell, passes):
    check(spec(cell), passes, resets=False)


@pytest.mark.parametrize("passes", [True, False], ids=["passes", "raw"])
@pytest.mark.parametrize("name", list(MODELS))
def test_gradcheck_models(name, passes):
    resets = name in ("stack2", "embedding", "tbptt-disjoint", "tbptt-bidir")
    check(MODELS[name], passes, resets=resets)


def test_gradcheck_spec_report(tmp_path):
    from rnnc.gradcheck import gradcheck_spec

    path = tmp_path / "tiny.rnn"
    text = MODELS["tbptt-overlap"].replace("dense(features: 2)", "onehot(vocab: auto)")
    path.write_text(text.replace('path: "x.txt"', 'path: "x.txt", window: 8'), encoding="utf-8")
    (tmp_path / "x.txt").write_text("abcab cab bca " * 20, encoding="utf-8")
    report = gradcheck_spec(path, T=5, B=2, max_entries=3)
    assert report.ok, report.render()
    text = report.render()
    assert "layer1.W_z" in text and "passed" in text and "window" in text


def test_gradcheck_spec_covers_truncation_windows(tmp_path):
    """By default the random batch is long enough for two truncated-BPTT windows, so the
    truncation itself is checked; a shorter --steps says it is not."""
    from rnnc.gradcheck import auto_steps, gradcheck_spec

    assert auto_steps(None, None) == 5
    assert auto_steps(3, None) == 7 and auto_steps(4, 6) == 11 and auto_steps(50, 50) == 64
    path = tmp_path / "tiny.rnn"
    text = MODELS["tbptt-overlap"].replace("dense(features: 2)", "onehot(vocab: auto)")
    text = re.sub(r"bptt k1 \d+ k2 \d+", "bptt k1 6 k2 6", text)
    path.write_text(text.replace('path: "x.txt"', 'path: "x.txt", window: 8'), encoding="utf-8")
    (tmp_path / "x.txt").write_text("abcab cab bca " * 20, encoding="utf-8")
    report = gradcheck_spec(path, B=2, max_entries=2)
    assert report.ok and report.T == 13 and len(report.windows) == 3, report.render()
    assert "note:" not in report.render()
    short = gradcheck_spec(path, T=5, B=2, max_entries=2)
    assert len(short.windows) == 1
    assert "the truncation itself is not checked; --steps 7" in short.render()


def test_gradcheck_passthrough_state_under_truncation():
    """A state passed through unchanged (c' = c), windows and no lengths: the state the
    reference holds constant where a window starts came back from forward as the initial
    state's own array, so perturbing that in place moved it too (state/layer1.c was
    reported wrong, 0.27 relative error, though the module's gradient is right)."""
    cell = ("cell keep(x) {\n  state h, c\n  h' = tanh(W @ x + U @ h + p * c)\n"
            "  c' = c\n}\n")
    text = cell + spec("keep(hidden: 3)", train="bptt k1 2")
    rows = gradcheck(module_of(text), T=5, B=2, lengths=False, max_entries=3)
    assert max(e for _, e in rows) < TOL, rows


def test_gradcheck_catches_a_wrong_gradient():
    module = module_of(spec("elman(hidden: 3)"))
    broken = load_module(source_of(spec("elman(hidden: 3)")).replace(
        "d_t4 = d_h_next * (1.0 - h_next * h_next)", "d_t4 = d_h_next * (1.0 - h_next)"),
        "broken")
    assert max(e for _, e in gradcheck(module, max_entries=4)) < TOL
    assert max(e for _, e in gradcheck(broken, max_entries=4)) > 1e-3


# ------------------------------------------------------------------- contract

CONTRACT = ["SPEC", "SPEC_SHA256", "PARAM_SHAPES", "PARAM_INITS", "STATE_SHAPES", "MODEL",
            "TRAIN", "init_params", "initial_state", "step", "forward", "loss_and_grad",
            "init_opt_state", "train_step"]

FULL = spec("lstm(hidden: 4, peepholes: true); gru(hidden: 3) direction bidirectional",
            train="bptt k1 3\n  updater adam(lr: 0.01)\n  clip norm 1.0\n  l2 0.001\n"
                  "  dropout input 0.1 layers 0.2 output 0.3")


def test_contract_names_and_shapes():
    m = module_of(FULL)
    for name in CONTRACT:
        assert hasattr(m, name), name
    params = m.init_params(0)
    assert list(params) == list(m.PARAM_SHAPES)
    assert all(params[k].shape == tuple(s) for k, s in m.PARAM_SHAPES.items())
    assert list(m.PARAM_SHAPES)[:4] == ["layer1.W_f", "layer1.U_f", "layer1.p_f", "layer1.b_f"]
    assert "layer2.fwd.W_z" in m.PARAM_SHAPES and "layer2.bwd.b_hn" in m.PARAM_SHAPES
    assert list(m.PARAM_SHAPES)[-2:] == ["head.W", "head.b"]
    assert np.all(params["layer1.b_f"] == 1.0)  # forget bias
    state = m.initial_state(3)
    assert set(state) == set(m.STATE_SHAPES) == {"layer1.h", "layer1.c", "layer2.fwd.h",
                                                  "layer2.bwd.h"}
    assert m.TRAIN["bptt"] == {"k1": 3, "k2": 3}
    assert m.MODEL["layers"][1]["directions"] == ["fwd", "bwd"]


def test_init_is_deterministic_and_follows_the_initialisers():
    yaml = """
model:
  input: {onehot: {vocab: 5}}
  layers:
    - gru: {hidden: 6, init: {"U_*": orthogonal}}
  head: {softmax: {at: per_step, classes: 4}}
"""
    program = program_from_text(yaml, name="init.yaml")
    m = load_module(source_for(program), "init_test")
    a, b = m.init_params(3, "float64"), m.init_params(3, "float64")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layer1.W_z"], m.init_params(4, "float64")["layer1.W_z"])
    u = a["layer1.U_z"]
    assert np.allclose(u @ u.T, np.eye(6), atol=1e-12)
    w = a["layer1.W_z"]  # xavier uniform, fan_in 5, fan_out 6
    assert np.max(np.abs(w)) <= np.sqrt(6.0 / 11.0)
    assert m.PARAM_INITS["layer1.W_z"] == ("xavier_uniform", (), 5, 6)


def test_generated_module_imports_without_rnnc(tmp_path):
    """Copy the file elsewhere and import it in an isolated interpreter with only numpy."""
    path = tmp_path / "model_np.py"
    path.write_text(source_of(FULL), encoding="utf-8")
    numpy_site = str(Path(np.__file__).resolve().parents[1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert imported == {"math", "numpy"}
    # a fake rnnc that explodes on import, first on the path: the module must not touch it
    (tmp_path / "rnnc").mkdir()
    (tmp_path / "rnnc" / "__init__.py").write_text("raise ImportError('rnnc was imported')\n")
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import model_np as m\n"
        "p = m.init_params(0)\n"
        "xs = [[1, 2, 3, 0], [0, 1, 0, 1]]\n"
        "import numpy as np; xs = np.array(xs)\n"
        "loss, g, s = m.loss_and_grad(p, xs, xs)\n"
        "p, o, s, met = m.train_step(p, m.init_opt_state(p), xs, xs)\n"
        "assert 'rnnc' not in sys.modules\n"
        "print('ok', round(met['loss'], 3))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path), numpy_site],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


LONG_NAMES = "\n".join([
    "cell a_very_long_custom_cell_name_for_wrapping(input_vector_x) {",
    "  state hidden_state_with_a_long_name, second_state[3]",
    "  param recurrent_weight_matrix_with_long_name[hidden, hidden]",
    "  gate_with_a_long_name = sigmoid(input_weight_matrix_number_one @ input_vector_x + "
    "recurrent_weight_matrix_with_long_name @ hidden_state_with_a_long_name + bias_of_the_gate)",
    "  candidate = tanh(another_input_weight_matrix @ input_vector_x + "
    "second_recurrent_matrix @ (gate_with_a_long_name * hidden_state_with_a_long_name))",
    "  hidden_state_with_a_long_name' = (1 - gate_with_a_long_name) * "
    "hidden_state_with_a_long_name + gate_with_a_long_name * candidate",
    "  second_state' = tanh(third_matrix_with_long_name @ candidate + "
    "fourth_matrix_of_it @ second_state)",
    "}",
    "model a_model_with_a_long_name_too {",
    "  input dense(features: 3)",
    "  layer a_very_long_custom_cell_name_for_wrapping(hidden: 4, "
    'name: "a_first_layer_with_a_long_name_indeed") direction bidirectional',
    '  layer lstm(hidden: 3, name: "the_second_layer_with_a_very_long_name_indeed_more") '
    "dropout 0.1",
    "  head linear(at: last, size: 2)",
    "}",
    "train {",
    '  data text(path: "a/very/long/path/to/some/data/file/that/goes/on/and/on/forever.txt")',
    "  bptt k1 3 k2 5",
    "}",
])


def test_ordinary_specs_need_no_ruff_at_emit_time(monkeypatch):
    """The emitter prints formatted code itself; ruff only wraps what long names stretch."""
    from rnnc.backends.numpy import emitter

    monkeypatch.setattr(emitter.NumpyEmitter, "format_long", False)
    for text in [FULL, *MODELS.values()]:
        src = emitter.emit(program_from_text(text, 5, 4))
        assert max(len(line) for line in src.splitlines()) <= 100


def test_long_names_still_give_correct_gradients():
    m = module_for(program_from_text(LONG_NAMES, name="long.rnn"))
    rows = gradcheck(m, T=5, B=2, max_entries=3, resets=True)
    assert max(e for _, e in rows) < TOL


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_generated_code_is_ruff_clean(tmp_path):
    texts = [FULL, MODELS["dense-linear"], MODELS["linear-last"],
             spec("lstm(hidden: 3, proj: 2, cell_clip: 1.0)", train="bptt k1 2 k2 5"),
             LONG_NAMES]
    for i, text in enumerate(texts):
        for passes in (True, False):
            (tmp_path / f"gen_{i}_{passes}.py").write_text(source_of(text, passes))
    cfg = Path(__file__).resolve().parents[1] / "pyproject.toml"
    files = sorted(str(p) for p in tmp_path.glob("gen_*.py"))
    check = subprocess.run(["ruff", "check", "--no-cache", "--config", str(cfg), *files],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(["ruff", "format", "--check", "--diff", "--no-cache", "--config",
                          str(cfg), *files], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_compiling_twice_gives_identical_bytes():
    a = source_for(program_from_text(FULL, 5, 4))
    b = source_for(program_from_text(FULL, 5, 4))
    assert a == b
    assert a.startswith("# Generated by rnnc ")
    assert "DO NOT EDIT" in a.splitlines()[0]
    assert "spec_sha256: " in a.splitlines()[1] and "backend: numpy" in a.splitlines()[1]


def test_spec_text_is_escaped_not_spliced():
    text = spec("elman(hidden: 2)", train='epochs 2').replace(
        'path: "x.txt"', 'path: "a\\"\\"\\" ; import os \\\\ b.txt"')
    src = source_of(text)
    m = load_module(src, "escaped")
    assert m.TRAIN["data"]["options"]["path"] == 'a""" ; import os \\ b.txt'


# --------------------------------------------------------------------- dtypes


def _all_float_dtypes(obj, out):
    if isinstance(obj, dict):
        for v in obj.values():
            _all_float_dtypes(v, out)
    elif isinstance(obj, tuple | list):
        for v in obj:
            _all_float_dtypes(v, out)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        out.add(obj.dtype)
    return out


@pytest.mark.parametrize("text", [FULL, MODELS["linear-last"], MODELS["embedding"]],
                         ids=["full", "linear-last", "embedding"])
def test_float32_stays_float32(text):
    m = module_of(text)
    params = m.init_params(0, "float32")
    rng = np.random.default_rng(0)
    from rnnc.gradcheck import random_batch

    xs, ys = random_batch(m, 6, 3, rng)
    if xs.dtype.kind == "f":
        xs = xs.astype(np.float32)
        ys = ys.astype(np.float32) if ys.dtype.kind == "f" else ys
    lengths = np.array([6, 4, 5])
    resets = rng.random((3, 6)) < 0.2
    out, final = m.forward(params, xs, None, lengths, resets)
    loss, grads, final2 = m.loss_and_grad(params, xs, ys, None, lengths, resets,
                                          np.random.default_rng(1), wrt_inputs=True)
    opt = m.init_opt_state(params)
    p2, opt2, final3, metrics = m.train_step(params, opt, xs, ys, None, lengths, resets,
                                            np.random.default_rng(2))
    seen = _all_float_dtypes([out, final, grads, final2, p2, opt2, final3], set())
    assert seen == {np.dtype(np.float32)}
    assert isinstance(loss, float) and np.isfinite(loss)
    assert set(metrics) == {"loss", "grad_norm", "lr"}


def test_float64_params_give_float64():
    m = module_of(MODELS["stack2"])
    params = m.init_params(0, "float64")
    xs = np.zeros((2, 3), dtype=int)
    loss, grads, final = m.loss_and_grad(params, xs, xs)
    assert _all_float_dtypes([grads, final], set()) == {np.dtype(np.float64)}


# ------------------------------------------------------------------ semantics


def test_step_matches_forward():
    m = module_of(MODELS["stack2"])
    params = m.init_params(1, "float64")
    xs = np.random.default_rng(0).integers(0, 5, size=(2, 6))
    ys, final = m.forward(params, xs)
    state = None
    for t in range(6):
        y, state = m.step(params, xs[:, t], state)
        np.testing.assert_allclose(y, ys[:, t], rtol=1e-12, atol=1e-14)
    for k in final:
        np.testing.assert_allclose(state[k], final[k], rtol=1e-12, atol=1e-14)


def test_onehot_encoding_allocates_no_vocab_by_vocab_matrix():
    """A one-hot input is written in place: np.eye(vocab)[ids] allocated vocab^2 floats
    per call (100 MB per forward, per sampled character, at V = 5,000; 10 GB at 50,000)."""
    import tracemalloc

    V = 3000
    m = module_of(spec("elman(hidden: 2)", inp=f"onehot(vocab: {V})"), n_in=V)
    params = m.init_params(0)
    xs = np.array([[0, V - 1, 7]])
    probs, _ = m.forward(params, xs)  # warm
    tracemalloc.start()
    try:
        got, _ = m.forward(params, xs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < V * V * 4 // 8, f"peak {peak} bytes for 3 tokens"
    np.testing.assert_array_equal(got, probs)
    x = m._encode(params, xs, np.float32)
    assert x.shape == (3, 1, V) and x.dtype == np.float32
    np.testing.assert_array_equal(x.argmax(-1)[:, 0], xs[0])
    assert x.sum() == 3


def test_step_refuses_bidirectional_models():
    m = module_of(MODELS["bidir-sum"])
    with pytest.raises(NotImplementedError, match="bidirectional"):
        m.step(m.init_params(0), np.array([1, 2]), None)


def test_lengths_freeze_the_state_and_pick_the_last_step():
    m = module_of(spec("gru(hidden: 3)", head="softmax last"))
    params = m.init_params(2, "float64")
    xs = np.random.default_rng(1).integers(0, 5, size=(3, 6))
    lengths = np.array([6, 2, 4])
    out, final = m.forward(params, xs, lengths=lengths)
    for b, n in enumerate(lengths):
        ref, ref_final = m.forward(params, xs[b:b + 1, :n])
        np.testing.assert_allclose(out[b], ref[0], rtol=1e-12)
        np.testing.assert_allclose(final["layer1.h"][b], ref_final["layer1.h"][0], rtol=1e-12)


def test_backward_direction_starts_at_each_rows_last_valid_step():
    m = module_of(MODELS["backward"])
    params = m.init_params(2, "float64")
    xs = np.random.default_rng(1).integers(0, 5, size=(2, 5))
    out, _ = m.forward(params, xs, lengths=np.array([5, 3]))
    ref, _ = m.forward(params, xs[1:, :3])
    np.testing.assert_allclose(out[1, :3], ref[0], rtol=1e-12)


def test_resets_split_a_stream_into_documents():
    m = module_of(MODELS["stack2"])
    params = m.init_params(0, "float64")
    xs = np.random.default_rng(3).integers(0, 5, size=(1, 7))
    resets = np.zeros((1, 7), dtype=bool)
    resets[0, 3] = True
    out, _ = m.forward(params, xs, resets=resets)
    ref_a, _ = m.forward(params, xs[:, :3])
    ref_b, _ = m.forward(params, xs[:, 3:])
    np.testing.assert_allclose(out[:, :3], ref_a, rtol=1e-12)
    np.testing.assert_allclose(out[:, 3:], ref_b, rtol=1e-12)


def test_loss_is_the_mean_over_valid_steps():
    m = module_of(spec("elman(hidden: 3)"))
    params = m.init_params(0, "float64")
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 5, (2, 4)), rng.integers(0, 4, (2, 4))
    lengths = np.array([4, 1])
    probs, _ = m.forward(params, xs, lengths=lengths)
    nll = -np.log(np.take_along_axis(probs, ys[..., None], -1)[..., 0])
    want = (nll[0].sum() + nll[1, 0]) / 5
    loss, _, _ = m.loss_and_grad(params, xs, ys, lengths=lengths)
    assert loss == pytest.approx(want, rel=1e-12)


def test_dropout_is_inverted_seeded_and_only_with_rng():
    text = spec("gru(hidden: 3); elman(hidden: 3)",
                train="dropout input 0.5 layers 0.3 output 0.2")
    m = module_of(text)
    params = m.init_params(0, "float64")
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 5, (4, 6)), rng.integers(0, 4, (4, 6))
    plain = m.loss_and_grad(params, xs, ys)
    a = m.loss_and_grad(params, xs, ys, rng=np.random.default_rng(7))
    b = m.loss_and_grad(params, xs, ys, rng=np.random.default_rng(7))
    c = m.loss_and_grad(params, xs, ys, rng=np.random.default_rng(8))
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    assert a[0] != plain[0] and a[0] != c[0]
    # forward never drops
    out1, _ = m.forward(params, xs)
    out2, _ = m.forward(params, xs)
    assert np.array_equal(out1, out2)
    # the masks are inverted Bernoulli(1 - p): mean 1, values 0 or 1 / (1 - p)
    masks = m._dropout_masks(np.random.default_rng(0), 200, 50, np.float64)
    assert set(masks) == {"input", "layer1", "layer2", "output"}
    for name, p in (("input", 0.5), ("layer1", 0.3), ("output", 0.2)):
        vals = np.unique(masks[name])
        np.testing.assert_allclose(vals, [0.0, 1.0 / (1.0 - p)])
        assert abs(masks[name].mean() - 1.0) < 0.05
    # with a fixed mask the gradient is the exact gradient of the dropped network
    grads = m.loss_and_grad(params, xs, ys, rng=np.random.default_rng(7))[1]
    eps = 1e-6
    w = params["layer1.U_z"]
    w[1, 2] += eps
    up = m.loss_and_grad(params, xs, ys, rng=np.random.default_rng(7))[0]
    w[1, 2] -= 2 * eps
    down = m.loss_and_grad(params, xs, ys, rng=np.random.default_rng(7))[0]
    w[1, 2] += eps
    assert (up - down) / (2 * eps) == pytest.approx(grads["layer1.U_z"][1, 2], rel=1e-6)


def test_train_step_learns_and_reports_metrics():
    text = spec("lstm(hidden: 8)", train="updater adam(lr: 0.05)\n  clip norm 1.0")
    m = module_of(text)
    params = m.init_params(0)
    opt = m.init_opt_state(params)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 5, (8, 10))
    ys = (xs + 1) % 4  # predictable from the current token
    first = None
    for _ in range(40):
        params, opt, _, metrics = m.train_step(params, opt, xs, ys)
        first = metrics["loss"] if first is None else first
    assert metrics["loss"] < 0.5 * first
    assert metrics["lr"] == pytest.approx(0.05)
    assert int(opt["step"]) == 40


def test_regularisation_skips_biases():
    text = spec("elman(hidden: 3)", train="updater sgd(lr: 1.0)\n  l2 0.5")
    m = module_of(text)
    params = m.init_params(0, "float64")
    params["layer1.b"] += 1.0
    xs = np.zeros((1, 2), dtype=int)
    _, grads, _ = m.loss_and_grad(params, xs, xs)
    new, _, _, _ = m.train_step(params, m.init_opt_state(params), xs, xs)
    np.testing.assert_allclose(new["layer1.b"], params["layer1.b"] - grads["layer1.b"])
    np.testing.assert_allclose(new["layer1.W"], params["layer1.W"] - grads["layer1.W"]
                               - 0.5 * params["layer1.W"])


def test_wrt_inputs_gives_input_and_state_gradients():
    m = module_of(MODELS["dense-linear"])
    params = m.init_params(0, "float64")
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3, 4))
    _, grads, _ = m.loss_and_grad(params, xs, ys, wrt_inputs=True)
    assert grads["xs"].shape == xs.shape
    assert grads["state/layer1.c"].shape == (2, 3)
    _, plain, _ = m.loss_and_grad(params, xs, ys)
    assert set(plain) == set(m.PARAM_SHAPES)


def test_readable_step_functions():
    src = source_of(spec("lstm(hidden: 3)"))
    fwd = src[src.index("def lstm_step("):src.index("def lstm_forward(")]
    assert "f = 0.5 * (1.0 + np.tanh(0.5 * " in fwd and "# f = sigmoid(" in fwd
    bwd = src[src.index("def lstm_backward_step("):src.index("def lstm_backward_hoisted(")]
    assert "np.concatenate(" in bwd and "@ Wcat_h" in bwd and "_outer" not in bwd
    post = src[src.index("def lstm_backward_hoisted("):src.index("def lstm_backward(")]
    assert "_outer(d_h_proj, h)" in post  # the hoisted weight gradient: one product


# ------------------------------------- classic cells that PyTorch has no module for


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _classic_step(cell, p, x, h, c):
    """One step of the textbook equations, written out independently of specs/lib/."""
    def lin(g):
        return p[f"W_{g}"] @ x + p[f"U_{g}"] @ h + p[f"b_{g}"]

    if cell == "elman_softsign":  # h' = softsign(W x + U h + b)
        a = p["W"] @ x + p["U"] @ h + p["b"]
        return a / (1.0 + np.abs(a)), c
    if cell == "gru_before":  # Cho et al. 2014: the reset gate scales h before U_n
        z, r = _sig(lin("z")), _sig(lin("r"))
        n = np.tanh(p["W_n"] @ x + p["U_n"] @ (r * h) + p["b_n"])
        return (1.0 - z) * n + z * h, c
    # LSTM, Gers et al.: peepholes read c_{t-1} for i and f, c_t for o
    peep = cell == "lstm_peephole"
    f = _sig(lin("f") + (p["p_f"] * c if peep else 0.0))
    i = 1.0 - f if cell == "lstm_coupled" else _sig(lin("i") + (p["p_i"] * c if peep else 0.0))
    c_new = f * c + i * np.tanh(lin("g"))
    o = _sig(lin("o") + (p["p_o"] * c_new if peep else 0.0))
    return o * np.tanh(c_new), c_new


@pytest.mark.parametrize("cell, layer", [
    ("elman_softsign", "elman(hidden: 4, act: softsign)"),
    ("gru_before", 'gru(hidden: 4, reset: "before")'),
    ("lstm_peephole", "lstm(hidden: 4, peepholes: true)"),
    ("lstm_coupled", "lstm(hidden: 4, coupled: true)"),
])
def test_classic_cells_match_their_textbook_equations(cell, layer):
    """The forward pass of the library cells PyTorch cannot check (test_oracles_torch
    covers nn.RNN/LSTM/GRU), against the equations written out in NumPy, from a
    non-zero state and with random (not initial) parameters."""
    text = (f"model m {{\n  input dense(features: 3)\n  layer {layer}\n"
            "  head linear per_step\n}\n")
    m = load_module(source_for(program_from_text(text, 3, 2)))
    rng = np.random.default_rng(7)
    params = {k: rng.uniform(-0.8, 0.8, size=s) for k, s in m.PARAM_SHAPES.items()}
    state = {k: rng.uniform(-0.5, 0.5, size=(2,) + tuple(s)) for k, s in m.STATE_SHAPES.items()}
    xs = rng.normal(size=(2, 6, 3))
    ys, final = m.forward(params, xs, state=state)
    p = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("layer1.")}
    for b in range(2):
        h = state["layer1.h"][b]
        c = state["layer1.c"][b] if "layer1.c" in state else None
        for t in range(6):
            h, c = _classic_step(cell, p, xs[b, t], h, c)
            want = params["head.W"] @ h + params["head.b"]
            np.testing.assert_allclose(ys[b, t], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(final["layer1.h"][b], h, rtol=1e-10, atol=1e-12)
