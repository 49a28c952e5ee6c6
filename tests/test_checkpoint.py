"""Checkpoints (rnnc.train.checkpoint) and run-folder helpers (rnnc.train.runs).

No backend is needed here: these are the pieces under `rnnc train --resume`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnnc.data import build_dataset, evaluate_outputs
from rnnc.errors import TrainError
from rnnc.spec import parse_spec
from rnnc.spec.schema import TRAIN
from rnnc.train import checkpoint as ckpt
from rnnc.train.driver import METRIC_KEYS, StopRule, _trim_metrics, stop_rule
from rnnc.train.runs import Overrides, apply_overrides, read_metrics


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    params = {"layer1.W": rng.normal(size=(4, 3)).astype(np.float32),
              "head.b": rng.normal(size=(3,)).astype(np.float32)}
    opt = {"step": np.asarray(7, dtype=np.int32),
           **{f"m/{k}": np.ones_like(v) for k, v in params.items()}}
    stream = {"layer1.h": rng.normal(size=(2, 4)).astype(np.float32)}
    return params, opt, stream


def _record(step, **kw):
    return {"step": step, "epoch": 0, "spec_sha256": "abc", "batch_index": 0, "rng": None,
            "epoch_loss": 0.0, "epoch_tokens": 0, "best": None, "best_epoch": None,
            "bad_epochs": 0, "finished": None, "elapsed": 0.0, **kw}


def test_round_trip(tmp_path):
    params, opt, stream = _arrays()
    path = ckpt.save_checkpoint(tmp_path, params, opt, stream, _record(3, vocab=["a", "b"]))
    assert path.name == "step-00000003"
    cp = ckpt.load_checkpoint(tmp_path)
    assert cp.step == 3 and cp.record["vocab"] == ["a", "b"]
    for got, want in ((cp.params, params), (cp.opt_state, opt), (cp.stream_state, stream)):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            assert np.array_equal(got[k], want[k])
    assert cp.opt_state["step"].shape == ()  # 0-d arrays survive


def test_no_stream_state_and_jax_arrays(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    ckpt.save_checkpoint(tmp_path, params, {"step": jnp.zeros((), jnp.int32)}, None, _record(1))
    cp = ckpt.load_checkpoint(tmp_path)
    assert cp.stream_state is None
    assert np.array_equal(cp.params["w"], np.arange(6.0).reshape(2, 3))


def test_pointers_and_pruning(tmp_path):
    params, opt, _ = _arrays()
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(1), best=True)
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(2))
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(3))
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["step-00000001", "step-00000003"]  # best and latest only
    assert ckpt.load_checkpoint(tmp_path, "best").step == 1
    assert ckpt.load_checkpoint(tmp_path, "latest").step == 3
    # the same step saved twice gets a second folder, and the pointer moves to it
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(3, note="again"))
    assert ckpt.load_checkpoint(tmp_path).record["note"] == "again"
    assert ckpt.read_pointer(tmp_path, "latest") == "step-00000003.1"


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    """A checkpoint folder was 0700 (mkdtemp), its safetensors files 0600: a run folder
    shared with others could not be evaluated or resumed by them."""
    import os
    import stat

    params, opt, stream = _arrays()
    mask = os.umask(0o022)
    try:
        path = ckpt.save_checkpoint(tmp_path, params, opt, stream, _record(1), best=True)
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for f in [*path.iterdir(), tmp_path / "latest", tmp_path / "best"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name


def test_best_falls_back_to_latest(tmp_path):
    params, opt, _ = _arrays()
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(5))
    assert ckpt.load_checkpoint(tmp_path, "best").step == 5


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    params, opt, _ = _arrays()
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(1))
    real = ckpt.save_file
    calls = []

    def failing(arrays, path):
        calls.append(path)
        if len(calls) == 2:  # params written, then the disk "fills up"
            raise OSError(28, "No space left on device")
        return real(arrays, path)

    monkeypatch.setattr(ckpt, "save_file", failing)
    with pytest.raises(TrainError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, params, opt, None, _record(2))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path).step == 1
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["step-00000001"]


def test_full_disk_in_safetensors_is_one_message(tmp_path, monkeypatch):
    # safetensors reports a failed write as its own SafetensorError, not as an OSError
    # (this was a traceback when a disk filled up at an epoch's checkpoint)
    from safetensors import SafetensorError

    params, opt, _ = _arrays()
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(1))

    def full(arrays, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(TrainError) as err:
        ckpt.save_checkpoint(tmp_path, params, opt, None, _record(2))
    assert err.value.message.endswith(": No space left on device (os error 28)")
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path).step == 1
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["step-00000001"]


def test_interrupt_during_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    params, opt, _ = _arrays()
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(1))

    def interrupted(arrays, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, params, opt, None, _record(2))
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert ckpt.load_checkpoint(tmp_path).step == 1


def test_missing_and_damaged(tmp_path):
    with pytest.raises(TrainError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "checkpoints")
    params, opt, _ = _arrays()
    path = ckpt.save_checkpoint(tmp_path, params, opt, None, _record(1))
    (path / "params.safetensors").write_bytes(b"garbage")
    with pytest.raises(TrainError, match="damaged"):
        ckpt.load_checkpoint(tmp_path)
    # a folder without its JSON record (written last) is not a checkpoint
    (path / ckpt.RECORD).unlink()
    assert not ckpt.has_checkpoint(tmp_path)


def test_newest_whole_checkpoint(tmp_path):
    params, opt, _ = _arrays()
    for step in (2, 10, 9):
        ckpt.save_checkpoint(tmp_path, params, opt, None, _record(step), best=step == 2)
    ckpt.save_checkpoint(tmp_path, params, opt, None, _record(9))  # step-00000009.1
    assert ckpt.checkpoint_names(tmp_path) == ["step-00000009.1", "step-00000002"]
    assert ckpt.load_newest(tmp_path)[0].path.name == "step-00000009.1"
    (tmp_path / "step-00000009.1" / "opt_state.safetensors").write_bytes(b"")
    cp, notes = ckpt.load_newest(tmp_path)
    assert cp.step == 2 and len(notes) == 1 and "step-00000009.1' is damaged" in notes[0]
    (tmp_path / "latest").unlink()
    assert ckpt.holds_checkpoints(tmp_path) and not ckpt.has_checkpoint(tmp_path)
    (tmp_path / "step-00000002" / "params.safetensors").write_bytes(b"")
    with pytest.raises(TrainError, match="step-00000009.1' is damaged"):
        ckpt.load_newest(tmp_path)
    assert not ckpt.holds_checkpoints(tmp_path / "nowhere")


@pytest.mark.parametrize("record, problem", [
    ([], "it holds list, not an object"),
    ({}, "it has no 'spec_sha256'"),
    ({**_record(1), "step": "1"}, "its 'step' is \"1\""),
])
def test_record_that_is_json_but_not_a_checkpoint_record(tmp_path, record, problem):
    params, opt, _ = _arrays()
    path = ckpt.save_checkpoint(tmp_path, params, opt, None, _record(1))
    (path / ckpt.RECORD).write_text(json.dumps(record))
    with pytest.raises(TrainError, match="damaged") as err:
        ckpt.load_checkpoint(tmp_path)
    assert problem in err.value.message


def test_numpy_rng_state_round_trip():
    rng = np.random.default_rng(123)
    rng.random(5)
    data = json.loads(json.dumps(ckpt.rng_to_json(rng)))
    again = ckpt.rng_from_json(data)
    assert np.array_equal(rng.random(10), again.random(10))


def test_jax_key_round_trip():
    jax = pytest.importorskip("jax")
    key = jax.random.split(jax.random.PRNGKey(5))[1]
    data = json.loads(json.dumps(ckpt.rng_to_json(key)))
    again = ckpt.rng_from_json(data)
    assert np.array_equal(np.asarray(jax.random.normal(key, (4,))),
                          np.asarray(jax.random.normal(again, (4,))))


# ---------------------------------------------------------------- run helpers

SPEC = """
model m {
  input onehot(vocab: auto)
  layer elman(hidden: 4)
  head softmax per_step
}
train {
  data reber(n: 50)
  updater adam(lr: 0.01, b1: 0.8)
  epochs 2
}
"""


def test_overrides_rewrite_the_train_block():
    spec = parse_spec(SPEC, "m.rnn")
    new = apply_overrides(spec, Overrides(epochs=5, batch=8, seed=3, lr=0.5))
    cfg = TRAIN.validate(new.train, "train")
    assert (cfg["epochs"], cfg["batch"], cfg["seed"]) == (5, 8, 3)
    assert cfg["updater"] == ("adam", {"lr": 0.5, "b1": 0.8, "b2": 0.999, "eps": 1e-8})
    assert apply_overrides(spec, Overrides()) == spec
    bare = parse_spec(SPEC.replace("updater adam(lr: 0.01, b1: 0.8)", ""), "m.rnn")
    cfg = TRAIN.validate(apply_overrides(bare, Overrides(lr=0.1)).train, "train")
    assert cfg["updater"][0] == "adam" and cfg["updater"][1]["lr"] == 0.1


def test_trim_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    recs = [{"kind": "train", "step": s, "loss": 1.0} for s in range(1, 6)]
    val = {"kind": "val", "step": 3, "epoch": 1, "val_loss": 0.5}
    recs.insert(3, val)
    recs.append({"kind": "test", "step": 5})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"kind": "tr')
    _trim_metrics(path, 3, 1)
    assert read_metrics(tmp_path) == recs[:4]
    # a checkpoint of epoch 1's last step from before its validation (a stop while the
    # epoch's checkpoint was written): the resumed run validates epoch 1 again
    _trim_metrics(path, 3, 0)
    assert read_metrics(tmp_path) == recs[:3]
    # JSON, but no records: skipped like a half-written line
    path.write_text('[1]\n5\n{"kind": "train", "step": 1}\n' + json.dumps(recs[0]) + "\n")
    _trim_metrics(path, 3, 0)
    assert read_metrics(tmp_path) == recs[:1]


@pytest.mark.parametrize("name", ["reber", "adding", "temporal_order"])
def test_metric_keys_match_evaluate_outputs(name):
    ds = build_dataset(name, {"n": 40}, 0)
    split = ds.val
    if ds.metric == "mse":
        out = np.zeros(split.y.shape)
    else:
        shape = split.y.shape + (ds.n_out,)
        out = np.full(shape, 1.0 / ds.n_out)
    assert tuple(evaluate_outputs(ds.metric, out, split)) == METRIC_KEYS[ds.metric]


def test_stop_rule():
    assert stop_rule(None, "accuracy") == StopRule("val_loss", None)
    rule = stop_rule(("reber_accuracy", 3), "reber_accuracy")
    assert rule.key == "val_reber_accuracy" and rule.maximize
    assert rule.better(0.5, None) and rule.better(0.6, 0.5) and not rule.better(0.5, 0.5)
    assert not rule.better(float("nan"), None)
    assert not stop_rule(("val_mse", 2), "mse").maximize
    with pytest.raises(TrainError, match="not measured") as err:
        stop_rule(("reber_acuracy", 3), "reber_accuracy")
    assert "val_reber_accuracy" in err.value.hint
