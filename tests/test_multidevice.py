"""Data-parallel training of a generated JAX module over several (host) devices.

A subprocess starts JAX with four CPU devices (``XLA_FLAGS=--xla_force_host_platform_
device_count=4``) and runs ``train_step`` once on one device and once with the batch
split over a four-device mesh (``make_mesh``), parameters replicated. In float32 the
parameters, optimizer state, final state and metrics agree to 1e-5: XLA's gradient
all-reduce only changes the order of the sums.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import xla_flags


pytest.importorskip("jax")

from rnnc.compiler import build  # noqa: E402
from rnnc.ir.lower import Sizes  # noqa: E402
from rnnc.spec import parse_spec  # noqa: E402


SPEC = """model dp {
  input onehot(vocab: 6)
  layer lstm(hidden: 8) dropout 0.25
  head softmax(at: per_step, classes: 6)
}
train {
  data reber
  bptt k1 3 k2 5
  updater adam(lr: 0.01)
  clip norm 1.0
  l2 0.001
}
"""

SCRIPT = textwrap.dedent("""
    import sys

    import jax
    import numpy as np

    sys.path.insert(0, sys.argv[1])
    import dp_jax as m

    assert jax.device_count() == 4, jax.devices()
    B, T = 8, 7
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 6, (B, T))
    ys = rng.integers(0, 6, (B, T))
    lengths = np.array([7, 7, 3, 5, 7, 1, 6, 7])
    resets = rng.random((B, T)) < 0.1
    key = jax.random.PRNGKey(3)

    def run(mesh):
        params = m.init_params(0)
        opt = m.init_opt_state(params)
        state = None
        for _ in range(2):  # the second step carries the state and optimizer moments
            params, opt, state, metrics = m.train_step(
                params, opt, xs, ys, state, lengths, resets, key, mesh=mesh)
        return jax.device_get((params, opt, state, metrics)), params

    (one, _), (four, sharded) = run(None), run(m.make_mesh(4))
    assert len(sharded["head.W"].sharding.device_set) == 4
    worst = 0.0
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-3)))
    assert worst <= 1e-5, worst
    mesh = m.make_mesh(2)
    xs2, = m.shard_batch(mesh, xs)
    assert len(xs2.sharding.device_set) == 2
    print("ok", worst)
""")


@pytest.mark.parametrize(
    ("bptt", "layout"),
    [("k1 3 k2 5", "auto"), (None, "auto"), (None, "feature")],
    # full BPTT: inputs as token ids; feature-major: the VJP's loops hold (n, B) values
    ids=["tbptt_windows", "full_bptt_token_ids", "full_bptt_feature_major"],
)
def test_data_parallel_train_step_equals_single_device(tmp_path, bptt, layout):
    from rnnc.backends.jax.emitter import emit

    spec = SPEC if bptt else SPEC.replace("  bptt k1 3 k2 5\n", "")
    program = build(parse_spec(spec, "dp.rnn"), Sizes(6, 6))
    source = emit(program, layout=layout)
    assert "class _Tokens" in source  # the windows objective takes the dense one-hot
    assert ("_step_fm(" in source) == (layout == "feature")
    (tmp_path / "dp_jax.py").write_text(source)
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {xla_flags.fast_compile()}"
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


LAYOUT_SCRIPT = textwrap.dedent("""
    import sys

    import jax
    import numpy as np

    sys.path.insert(0, sys.argv[1])
    import wide_jax as m

    (v,) = [c["vjp"] for c in m.CELLS.values()]
    fm = v["feature_major"]
    assert fm["train_max_batch"] == 32, fm["train_max_batch"]
    traced = []
    step = fm["backward_step"]
    fm["backward_step"] = lambda *a: traced.append(1) or step(*a)
    B, T = 64, 2
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 4, (B, T)), rng.integers(0, 4, (B, T))
    params = m.init_params(0)
    opt = m.init_opt_state(params)
    m.train_step(params, opt, xs, ys)
    assert traced == [], "one device, B = 64: batch-major loops"
    m.train_step(params, opt, xs, ys, mesh=m.make_mesh(4))
    assert traced == [1], "four devices, 16 rows each: feature-major loops"
    assert m._BATCH_SPLIT == [1]
    print("ok")
""")


def test_data_parallel_layout_follows_the_per_device_batch(tmp_path):
    """The feature-major loops pay up to a batch of 32 per device: a global batch of 64
    trains batch-major on one device and feature-major over four (16 rows each)."""
    from rnnc.backends.jax.emitter import emit

    spec = SPEC.replace("lstm(hidden: 8) dropout 0.25", "lstm(hidden: 512)").replace(
        "vocab: 6", "vocab: 4").replace("classes: 6", "classes: 4")
    program = build(parse_spec(spec, "wide.rnn"), Sizes(4, 4))
    (tmp_path / "wide_jax.py").write_text(emit(program))
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {xla_flags.fast_compile()}"
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run(
        [sys.executable, "-c", LAYOUT_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


ERRORS_SCRIPT = textwrap.dedent("""
    import sys

    import numpy as np

    sys.path.insert(0, sys.argv[1])
    import dp_jax as m

    def message(f):
        try:
            f()
        except ValueError as e:
            return str(e)
        raise AssertionError("no ValueError")

    mesh = m.make_mesh(4)
    params = m.init_params(0)
    opt = m.init_opt_state(params)
    xs = np.zeros((6, 3), int)
    got = message(lambda: m.train_step(params, opt, xs, xs, mesh=mesh))
    assert "must be a multiple of the mesh's 4 devices" in got and "(6, 3)" in got, got
    got = message(lambda: m.shard_batch(mesh, xs))
    assert "must be a multiple of the mesh's 4 devices" in got, got
    for n in (0, 5):
        got = message(lambda: m.make_mesh(n))
        assert f"n_devices must be in 1..4 (the devices JAX sees), got {n}" in got, got
    print("ok")
""")


def test_mesh_errors_are_one_value_error(tmp_path):
    """A batch that does not split over the mesh was XLA's IndivisibleError from deep in
    device_put, and make_mesh(5) on four devices quietly made a mesh of four: now one
    ValueError each, naming the batch or the device count."""
    from rnnc.backends.jax.emitter import emit

    program = build(parse_spec(SPEC, "dp.rnn"), Sizes(6, 6))
    (tmp_path / "dp_jax.py").write_text(emit(program))
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {xla_flags.fast_compile()}"
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", ERRORS_SCRIPT, str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
