"""Smoke tests for the benchmark baselines in ``bench/`` (tiny sizes, a few seconds)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest


BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import baselines  # noqa: E402
import common  # noqa: E402


V, H, T, B = 11, 8, 5, 2


def _have(*mods: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in mods)


# ------------------------------------------------------------------------- common


def test_lstm_flops_hand_computed():
    # layer: 2*B*T*(V+H)*4H = 2*2*5*19*32 = 12160; head: 2*B*T*H*V = 1760
    assert common.lstm_flops(V, H, T, B, training=False) == 13920
    assert common.lstm_flops(V, H, T, B) == 3 * 13920 == 41760
    # second layer: 2*2*5*(8+8)*32 = 10240
    assert common.lstm_flops(V, H, T, B, layers=2, training=False) == 13920 + 10240


def test_other_cell_flops():
    head = 2 * B * T * H * V
    for fn, gates in (
        (common.gru_flops, 3),
        (common.mgu_flops, 2),
        (common.peephole_flops, 4),
        (common.rnn_flops, 1),
        (common.elman_flops, 1),
    ):
        assert fn(V, H, T, B, training=False) == 2 * B * T * (V + H) * gates * H + head
        assert fn(V, H, T, B) == 3 * fn(V, H, T, B, training=False)
    with pytest.raises(ValueError):
        common.cell_flops("transformer", V, H, T, B)


def test_time_fn_and_table(capsys):
    calls = []
    st = common.time_fn(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5 and len(st["samples"]) == 3
    assert st["min_s"] <= st["median_s"] <= st["max_s"] and st["iqr_s"] >= 0
    text = common.print_table(
        [{"name": "a", "x": 1.5}, {"name": "bbb", "x": None}], ["name", "x"]
    )
    assert capsys.readouterr().out.strip() == text
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(ln) for ln in lines[:2]}) == 1


def test_random_batch():
    x, y = common.random_batch(V, T, B, seed=3)
    assert x.shape == y.shape == (B, T) and x.dtype == np.int64
    assert x.min() >= 0 and x.max() < V
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    x2, _ = common.random_batch(V, T, B, seed=3)
    np.testing.assert_array_equal(x, x2)


def test_machine_info():
    info = common.machine_info()
    assert info["cores"] >= 1 and "numpy" in info


# ---------------------------------------------------------------------- builders


def _params():
    out = []
    for (fw, kind), builder in baselines.BASELINES.items():
        marks = []
        if fw.startswith("torch") and not _have("torch"):
            marks.append(pytest.mark.skip(reason="torch not installed"))
        if fw == "flax" and not _have("jax", "flax", "optax"):
            marks.append(pytest.mark.skip(reason="flax/optax not installed"))
        out.append(pytest.param(builder, id=f"{fw}-{kind}", marks=marks))
    return out


@pytest.mark.parametrize("builder", _params())
def test_builder_train_step(builder):
    train_step, infer_step = builder(V, H, 1, T, B, 0)
    loss = train_step()
    assert isinstance(loss, float) and math.isfinite(loss)
    assert abs(loss - math.log(V)) < 1.0  # near-uniform predictions at init
    infer_step()


def test_measure_and_ratios():
    torch = pytest.importorskip("torch")
    del torch
    spec = baselines.ModelSpec("mgu", H)
    rows = []
    for fw, s in (("torch", baselines.reference_spec(spec)), ("torch_loop", spec)):
        steps = baselines.BASELINES[(fw, s.kind)](V, H, 1, T, B, 0)
        rows.append(baselines.measure(fw, s, *steps, V=V, T=T, B=B, repeat=1, warmup=1,
                                      peak_gflops=100.0))
    baselines.add_ratios(rows)
    assert rows[0]["train_x"] == 1.0 and rows[1]["vs"] == f"torch gru{H}"
    assert rows[1]["train_tok_s"] > 0 and rows[1]["infer_peak"] > 0
    baselines.print_rows(rows)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_loop_matches_nn(kind):
    """The hand-written LSTM/GRU use nn.LSTM/nn.GRU's math and gate layout."""
    torch = pytest.importorskip("torch")
    nn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    torch.manual_seed(1)
    ref = nn_cls(V, H, num_layers=2, batch_first=True)
    params = baselines.torch_loop_init(kind, V, H, 2, seed=0)
    with torch.no_grad():
        for i in range(2):
            b_ih, b_hh = getattr(ref, f"bias_ih_l{i}"), getattr(ref, f"bias_hh_l{i}")
            params[i][0].copy_(getattr(ref, f"weight_ih_l{i}").T)
            params[i][1].copy_(getattr(ref, f"weight_hh_l{i}").T)
            if kind == "lstm":
                params[i][2].copy_(b_ih + b_hh)
            else:
                params[i][2].copy_(b_ih)
                params[i][3].copy_(b_hh)
        params[-1][0].zero_()
        params[-1][1].zero_()
        params[-1][0][:, :H] = torch.eye(H)  # head passes h through to the first H logits
        tokens = torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(2))
        want, _ = ref(torch.nn.functional.one_hot(tokens, V).float())
        got = baselines.torch_loop_forward(kind, params, tokens, V)[..., :H]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_models_table():
    assert list(baselines.MODELS) == [
        "lstm128", "lstm512", "lstm2x256", "gru512", "peephole512", "mgu512"
    ]
    for spec in baselines.MODELS.values():
        assert ("torch_loop", spec.kind) in baselines.BASELINES
        assert ("flax", spec.kind) in baselines.BASELINES


def test_target_ratios_per_interleaved_round():
    """bench_all's targets: the ratio over all rounds, and the same ratio in each round
    (rows of one model's interleaved group only)."""
    import bench_all

    def row(fw, model, round_ms, gflops=1.0):
        step = float(np.median(round_ms))
        return {
            "framework": fw,
            "model": model,
            "train_tok_s": 3200 / step,
            "train_step_ms": step,
            "train_gflops": gflops,
            "train_round_ms": round_ms,
        }

    rows = [
        row("rnnc-jax", "lstm512", [300.0, 200.0, 250.0], gflops=2.0),
        row("torch", "lstm512", [240.0, 220.0, 230.0]),
        row("rnnc-jax", "mgu512", [100.0, 120.0, 110.0], gflops=1.0),
    ]
    goals = {g["target"]: g for g in bench_all.targets(rows)}
    g = goals["rnnc-jax / nn.LSTM train, lstm512"]
    assert g["ratio"] == pytest.approx(230.0 / 250.0) and not g["met"]
    assert g["rounds"] == pytest.approx([240 / 300, 220 / 200, 230 / 250])
    per_flop = goals["rnnc-jax GFLOP/s mgu512 / lstm512 (per FLOP)"]
    assert per_flop["ratio"] == pytest.approx(0.5) and per_flop["rounds"] == []
