"""Tests of rnnc.data: built-in datasets, file loaders, batching and metrics."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnc.data import (
    Batch,
    Dataset,
    Split,
    build_dataset,
    dataset_names,
    dataset_options,
    evaluate_outputs,
    iterate_batches,
    num_stream_windows,
    stream_windows,
)
from rnnc.data.core import split_counts
from rnnc.data.metrics import accuracy, cross_entropy, mse, reber_accuracy, reber_string_accuracy
from rnnc.data.text import decode_text
from rnnc.errors import DataError


GENERATED = ["reber", "embedded_reber", "adding", "copy", "temporal_order", "sine",
             "sine_generation"]
SMALL = {
    "reber": {"n": 300},
    "embedded_reber": {"n": 300},
    "adding": {"n": 300, "length": 20},
    "copy": {"n": 300},
    "temporal_order": {"n": 300},
    "sine": {"n": 300, "length": 30},
    "sine_generation": {"n": 300, "length": 30},
}
LETTERS = "BTPSXVE"


def build(name, seed=0, **options):
    return build_dataset(name, {**SMALL.get(name, {}), **options}, seed)


def decode(tokens, length):
    return "".join(LETTERS[t] for t in tokens[:length])


def check_consistent(ds: Dataset) -> None:
    """Shapes, dtypes, ranges and padding of every split agree with the declared task."""
    steps = ds.train.x.shape[1]
    for name, split in ds.splits.items():
        n = len(split)
        assert split.lengths.shape == (n,) and split.lengths.dtype == np.int32, name
        assert split.x.shape[:2] == (n, steps)
        if n:
            assert split.lengths.min() >= 1 and split.lengths.max() <= steps
        valid = np.arange(steps)[None, :] < split.lengths[:, None]
        if ds.input == "tokens":
            assert split.x.dtype == np.int32 and split.x.ndim == 2
            assert split.x.min(initial=0) >= 0 and split.x.max(initial=0) < ds.n_in
            assert not split.x[~valid].any()
        else:
            assert split.x.dtype == np.float64 and split.x.shape[2] == ds.n_in
            assert not split.x[~valid].any()
        expected_y = {
            "classify_step": ((n, steps), np.int32),
            "classify_last": ((n,), np.int32),
            "regress_step": ((n, steps, ds.n_out), np.float64),
            "regress_last": ((n, ds.n_out), np.float64),
        }[ds.task]
        assert split.y.shape == expected_y[0] and split.y.dtype == expected_y[1], name
        if ds.task.startswith("classify"):
            assert split.y.min(initial=0) >= 0 and split.y.max(initial=0) < ds.n_out
        if ds.task.endswith("_step"):
            assert not split.y[~valid].any()
        if split.legal is not None:
            assert split.legal.shape == (n, steps, ds.n_out) and split.legal.dtype == bool
            assert not split.legal[~valid].any()
    assert ds.info["split_sizes"] == {k: len(s) for k, s in ds.splits.items()}


# ---------------------------------------------------------------------------
# Registry and options


def test_names_and_options():
    assert set(dataset_names()) == {"reber", "embedded_reber", "adding", "copy",
                                    "temporal_order", "sine", "sine_generation", "text", "npz",
                                    "csv"}
    opts = dataset_options("adding")
    assert opts["length"] == 50 and opts["split"] == [0.8, 0.1, 0.1]
    opts["split"].append(1)  # a copy: the registry's defaults are unchanged
    assert dataset_options("adding")["split"] == [0.8, 0.1, 0.1]
    assert dataset_options("embedded_reber")["n"] == 2000
    assert dataset_options("text")["split"] == [0.9, 0.05, 0.05]


def test_unknown_dataset_and_option():
    with pytest.raises(DataError, match="unknown dataset 'rebr'") as err:
        dataset_options("rebr")
    assert err.value.hint == "did you mean 'reber'?"
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset("nope", {}, 0)
    with pytest.raises(DataError, match="unknown option 'lenght' for dataset 'adding'") as err:
        build_dataset("adding", {"lenght": 10}, 0)
    assert err.value.hint == "did you mean 'length'?"


@pytest.mark.parametrize("name, options, message", [
    ("adding", {"n": -1}, "option 'n' of dataset 'adding' must be an integer >= 1"),
    ("adding", {"n": "ten"}, "option 'n'.*must be an integer"),
    ("adding", {"length": True}, "option 'length'"),
    ("adding", {"split": [0.5, 0.5]}, "option 'split'.*3 fractions"),
    ("adding", {"split": [0.5, 0.3, 0.3]}, "sum to 1.1"),
    ("adding", {"split": [0.0, 0.5, 0.5]}, "non-empty train"),
    ("sine", {"noise": -1}, "option 'noise'"),
    ("temporal_order", {"relevant": 4}, "option 'relevant'"),
    ("reber", {"min_length": 3}, "option 'min_length'"),
    ("reber", {"min_length": 12, "max_length": 10}, "option 'max_length'"),
    ("adding", {"n": 5}, "too few for split"),
    ("adding", {"n": 1e300}, r"option 'n'.*must be an integer >= 1, got 1e300"),
    # an OverflowError traceback in NumPy's sampling
    ("embedded_reber", {"n": 10**30}, r"option 'n'.*>= 1 and at most 2147483647, got 1000"),
    ("copy", {"delay": 2**63}, r"option 'delay'.*>= 1 and at most 2147483647"),
    ("text", {}, "dataset 'text' needs option 'path'"),
    ("csv", {"path": "x.csv"}, "dataset 'csv' needs option 'targets'"),
])
def test_bad_options(name, options, message):
    with pytest.raises(DataError, match=message):
        build_dataset(name, options, 0)


def test_bad_seed():
    with pytest.raises(DataError, match="seed"):
        build_dataset("adding", SMALL["adding"], -1)


# ---------------------------------------------------------------------------
# Generated datasets: determinism, shapes, splits


@pytest.mark.parametrize("name", GENERATED)
def test_generated_consistent_and_deterministic(name):
    a, b, c = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    check_consistent(a)
    assert a.metric == {"reber": "reber_accuracy", "embedded_reber": "reber_accuracy"}.get(
        name, "mse" if a.task.startswith("regress") else "accuracy")
    for split in ("train", "val", "test"):
        sa, sb = a.split(split), b.split(split)
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
        np.testing.assert_array_equal(sa.lengths, sb.lengths)
    different = a.train.x.shape != c.train.x.shape or not np.array_equal(a.train.x, c.train.x)
    assert different


def test_split_sizes_and_disjoint():
    ds = build_dataset("adding", {"n": 1000, "length": 10, "split": [0.7, 0.2, 0.1]}, 0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (700, 200, 100)
    rows = [tuple(r) for s in ds.splits.values() for r in s.x[:, :, 0]]
    assert len(set(rows)) == 1000  # every example in exactly one split
    assert split_counts(10, [0.8, 0.1, 0.1]) == (8, 1, 1)
    assert sum(split_counts(7, [0.33, 0.33, 0.34])) == 7
    empty = build_dataset("adding", {"n": 10, "length": 4, "split": [1, 0, 0]}, 0)
    assert (len(empty.train), len(empty.val), len(empty.test)) == (10, 0, 0)
    # the split (not only the data) depends on the seed
    a = build_dataset("adding", {"n": 50, "length": 4}, 1)
    b = build_dataset("adding", {"n": 50, "length": 4}, 2)
    assert not np.array_equal(a.test.x, b.test.x)


# ---------------------------------------------------------------------------
# Reber grammars, checked against an independent description of the grammar

# The Reber grammar as a regular expression: the cycle 4 -X-> 3 -T*V-> 5 -P-> 4.
REBER_RE = r"B(?:(?:TS*X|PT*VP)(?:XT*VP)*(?:S|XT*VV)|PT*VV)E"
REBER = re.compile(REBER_RE)
EMBEDDED = re.compile(rf"B(?:T{REBER_RE}T|P{REBER_RE}P)E")

# The same grammar in the common "graph" notation (after the initial B): node ->
# (successor nodes, symbols); node 3 emits the final E.
GRAPH = [((1, 5), "TP"), ((1, 2), "SX"), ((3, 5), "SX"), ((6,), "E"), ((3, 2), "VP"),
         ((4, 5), "VT")]


def legal_after(prefix: str) -> set[str]:
    """The symbols the Reber grammar allows after ``prefix`` (which starts with B)."""
    node = 0
    for ch in prefix[1:]:
        nexts, symbols = GRAPH[node]
        node = nexts[symbols.index(ch)]
        if node == 6:
            return set()
    return set(GRAPH[node][1])


def embedded_legal_after(prefix: str) -> set[str]:
    if len(prefix) == 1:
        return {"T", "P"}
    inner = prefix[2:]
    if not inner:
        return {"B"}
    if inner.endswith("E") and REBER.fullmatch(inner):
        return {prefix[1]}
    if REBER.fullmatch(inner[:-1]) and inner[-1] in "TP":
        return {"E"}
    return legal_after(inner)


def test_regex_checker_itself():
    for good in ["BTSSXXTVVE", "BPVVE", "BTXSE", "BPTVPXVVE", "BTSXXVPSE"]:
        assert REBER.fullmatch(good), good
    for bad in ["BTSSXXTVE", "BPVE", "BTXXE", "TXSE", "BPVVEE"]:
        assert not REBER.fullmatch(bad), bad


@pytest.mark.parametrize("name", ["reber", "embedded_reber"])
def test_reber_strings(name):
    ds = build(name, min_length=5 if name == "reber" else 9, max_length=25)
    grammar = REBER if name == "reber" else EMBEDDED
    legal_fn = legal_after if name == "reber" else embedded_legal_after
    assert ds.vocab == list(LETTERS)
    seen = set()
    for split in ds.splits.values():
        for i in range(len(split)):
            n = split.lengths[i]
            string = decode(split.x[i], n) + LETTERS[split.y[i, n - 1]]
            assert grammar.fullmatch(string), string
            assert decode(split.y[i], n) == string[1:]
            assert (5 if name == "reber" else 9) <= len(string) <= 25
            for t in range(n):
                got = {LETTERS[v] for v in np.flatnonzero(split.legal[i, t])}
                assert got == legal_fn(string[: t + 1]), (string, t)
                assert split.legal[i, t, split.y[i, t]]
            seen.add(string)
    assert len(seen) > 50  # a real variety of strings


def test_embedded_reber_long_lag():
    ds = build("embedded_reber")
    for split in ds.splits.values():
        for i in range(len(split)):
            n = split.lengths[i]
            second, penultimate = split.x[i, 1], split.y[i, n - 2]
            assert second == penultimate and LETTERS[second] in "TP"
            # at the step predicting the penultimate symbol only that symbol is legal
            assert split.legal[i, n - 2].sum() == 1 and split.legal[i, n - 2, second]
            assert LETTERS[split.y[i, n - 1]] == "E"


def test_reber_length_range():
    ds = build("reber", min_length=12, max_length=14)
    full = np.concatenate([s.lengths for s in ds.splits.values()]) + 1
    assert full.min() >= 12 and full.max() <= 14
    assert set(full) == {12, 13, 14}
    assert ds.train.x.shape[1] == 13  # padded to the longest string
    # conditioning on length keeps the grammar's own odds: both length-5 strings are 1/8
    five = build("reber", n=2000, min_length=5, max_length=5)
    first = np.concatenate([s.x[:, 1] for s in five.splits.values()])
    assert 0.45 < np.mean(first == LETTERS.index("T")) < 0.55


# ---------------------------------------------------------------------------
# Other generated tasks


def test_adding_targets():
    ds = build("adding")
    for split in ds.splits.values():
        values, marks = split.x[..., 0], split.x[..., 1]
        assert ((values >= 0) & (values < 1)).all()
        assert set(np.unique(marks)) <= {0.0, 1.0}
        assert (marks.sum(1) == 2).all()
        half = split.x.shape[1] // 2
        assert (marks[:, :half].sum(1) == 1).all() and (marks[:, half:].sum(1) == 1).all()
        np.testing.assert_allclose(split.y[:, 0], (values * marks).sum(1))


def test_copy_layout():
    ds = build("copy", symbols=5, copy_length=4, delay=6)
    split = ds.train
    assert split.x.shape[1] == 4 + 6 + 4 and ds.n_in == 7 and ds.n_out == 6
    assert ((split.x[:, :4] >= 1) & (split.x[:, :4] <= 5)).all()
    assert (split.x[:, 4:9] == 0).all() and (split.x[:, 9] == 6).all()
    assert (split.x[:, 10:] == 0).all() and (split.y[:, :10] == 0).all()
    np.testing.assert_array_equal(split.y[:, 10:], split.x[:, :4])


@pytest.mark.parametrize("relevant", [2, 3])
def test_temporal_order_labels(relevant):
    ds = build("temporal_order", relevant=relevant)
    assert ds.n_out == 2 ** relevant and len(ds.info["classes"]) == 2 ** relevant
    v = ds.vocab
    for split in ds.splits.values():
        for i in range(len(split)):
            n = split.lengths[i]
            seq = "".join(v[t] for t in split.x[i, :n])
            assert 100 <= n <= 110 and seq[0] == "E" and seq[-1] == "B"
            order = "".join(ch for ch in seq if ch in "XY")
            assert len(order) == relevant
            assert set(seq[1:-1]) <= set("abcdXY")
            assert ds.info["classes"][split.y[i]] == order
            if relevant == 2:
                pos = [k for k, ch in enumerate(seq) if ch in "XY"]
                assert 10 <= pos[0] <= 20 and 50 <= pos[1] <= 60
    labels = np.concatenate([s.y for s in ds.splits.values()])
    assert set(labels) == set(range(2 ** relevant))


def test_sine_targets():
    ds = build("sine", noise=0.0)
    np.testing.assert_allclose(ds.train.y[:, :-1, 0], ds.train.x[:, 1:, 0], atol=1e-12)
    noisy = build("sine", noise=0.1)
    resid = noisy.train.y[:, :-1, 0] - noisy.train.x[:, 1:, 0]
    assert 0.08 < resid.std() < 0.12


def test_sine_generation_is_one_to_many():
    """Only step 0 carries input (a cue and the scaled frequency); every target is the
    wave of that frequency, recovered here from the cue alone."""
    ds = build("sine_generation")
    assert (ds.task, ds.input, ds.n_in, ds.n_out) == ("regress_step", "features", 2, 1)
    for split in ds.splits.values():
        x, y = split.x, split.y[..., 0]
        assert np.all(x[:, 0, 0] == 1.0) and np.all(x[:, 1:] == 0.0)
        assert np.all(np.abs(x[:, 0, 1]) <= 1.0)
        lo, hi = 0.02, 0.1
        freq = (lo + hi) / 2 + x[:, 0, 1] * (hi - lo) / 2
        t = np.arange(1, split.steps + 1)
        np.testing.assert_allclose(y, np.sin(2 * np.pi * freq[:, None] * t), atol=1e-12)
    # different frequencies, not one wave repeated
    assert np.ptp(ds.train.x[:, 0, 1]) > 1.5
    all_y = np.concatenate([s.y for s in ds.splits.values()])
    assert ds.info["baseline_mse"] == pytest.approx(float(np.mean(all_y ** 2)))
    assert 0.4 < ds.info["baseline_mse"] < 0.6


# ---------------------------------------------------------------------------
# Text


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_text_round_trip(tmp_path):
    text = "".join(f"document {i}: the quick brown fox jumps. é\n\n" for i in range(40))
    write(tmp_path, "corpus.txt", text)
    ds = build_dataset("text", {"path": "corpus.txt", "window": 16, "doc_separator": "\n\n"},
                       0, base_dir=tmp_path)
    check_consistent(ds)
    assert ds.vocab == sorted(set(text)) and ds.n_in == ds.n_out == len(ds.vocab)
    joined = "".join(decode_text(ds.stream[k], ds.vocab) for k in ("train", "val", "test"))
    assert joined == text
    assert sum(ds.info["split_chars"].values()) == len(text)
    assert abs(len(ds.stream["train"]) - 0.9 * len(text)) <= 1
    for name, split in ds.splits.items():
        s = ds.stream[name]
        assert len(split) == (len(s) - 1) // 16
        flat = split.x.reshape(-1)
        np.testing.assert_array_equal(flat, s[: len(flat)])
        np.testing.assert_array_equal(split.y.reshape(-1), s[1: len(flat) + 1])
        np.testing.assert_array_equal(split.resets.reshape(-1), ds.doc_starts[name][: len(flat)])
    # doc_starts: the first character of each document (and of each split's stream)
    train_text = decode_text(ds.stream["train"], ds.vocab)
    starts = np.flatnonzero(ds.doc_starts["train"])
    expected = [0] + [m.end() for m in re.finditer("\n\n", train_text) if m.end() < len(train_text)]
    assert list(starts) == expected
    assert all("document".startswith(train_text[k: k + 8]) for k in starts)
    assert ds.doc_starts["val"][0] and ds.info["n_docs"] == 40


def test_text_explicit_vocab(tmp_path):
    path = write(tmp_path, "t.txt", "abcabc" * 100)
    ds = build_dataset("text", {"path": str(path), "window": 10, "vocab": ["c", "b", "a", "z"]}, 0)
    assert ds.vocab == ["c", "b", "a", "z"] and ds.stream["train"][0] == 2
    with pytest.raises(DataError, match=r"character 'c' \(U\+0063\) at character offset 2"):
        build_dataset("text", {"path": str(path), "window": 10, "vocab": ["a", "b"]}, 0)


def test_text_errors(tmp_path):
    with pytest.raises(DataError, match="text file not found: .*missing.txt") as err:
        build_dataset("text", {"path": "missing.txt"}, 0, base_dir=tmp_path)
    assert "relative" in err.value.hint
    write(tmp_path, "latin1.txt", b"caf\xe9 au lait\n")
    with pytest.raises(DataError, match="not valid UTF-8: byte 0xe9 at byte offset 3") as err:
        build_dataset("text", {"path": "latin1.txt"}, 0, base_dir=tmp_path)
    assert "iconv" in err.value.hint
    write(tmp_path, "empty.txt", "")
    with pytest.raises(DataError, match="text file .*empty.txt is empty"):
        build_dataset("text", {"path": "empty.txt"}, 0, base_dir=tmp_path)
    write(tmp_path, "short.txt", "x" * 1000)
    with pytest.raises(DataError, match="corpus too short: the val part of short.txt has 50 "
                                        "characters, but a window of 100 needs at least 101"
                       ) as err:
        build_dataset("text", {"path": "short.txt"}, 0, base_dir=tmp_path)
    assert "needs at least 2020" in err.value.hint
    write(tmp_path, "ok.txt", "x" * 2020)
    build_dataset("text", {"path": "ok.txt"}, 0, base_dir=tmp_path)
    with pytest.raises(DataError, match="doc_separator"):
        build_dataset("text", {"path": "ok.txt", "doc_separator": ""}, 0, base_dir=tmp_path)
    # a huge window: one error at once (the hint's search for the size needed hung on
    # float rounding for windows like 10**20; such a window is now beyond any option's
    # largest integer, and one below it still gets the size it needs)
    with pytest.raises(DataError, match="window.*at most 2147483647, got 10000000000000"):
        build_dataset("text", {"path": "ok.txt", "window": 10**20}, 0, base_dir=tmp_path)
    with pytest.raises(DataError, match="a window of 2000000000 needs") as err:
        build_dataset("text", {"path": "ok.txt", "window": 2 * 10**9}, 0, base_dir=tmp_path)
    assert "it needs at least 40000000020" in err.value.hint


# ---------------------------------------------------------------------------
# Stream batching


def test_stream_windows_continuity():
    tokens = np.arange(1000, dtype=np.int32) % 97
    starts = np.zeros(1000, dtype=bool)
    starts[[0, 5, 250, 333, 998]] = True
    batch, window = 4, 30
    windows = list(stream_windows(tokens, batch, window, doc_starts=starts))
    per = 999 // batch  # 249 steps per stream
    assert len(windows) == num_stream_windows(1000, batch, window) == math.ceil(per / window)
    for i in range(len(windows) - 1):
        a, b = windows[i], windows[i + 1]
        assert a.x.shape == (batch, window) and (a.lengths == window).all()
        np.testing.assert_array_equal(b.x[:, 0], a.y[:, -1])  # next window starts where we left
    last = windows[-1]
    assert (last.lengths == per % window).all() and not last.x[:, per % window:].any()
    for b in range(batch):
        row_x = np.concatenate([w.x[b, : w.lengths[b]] for w in windows])
        row_y = np.concatenate([w.y[b, : w.lengths[b]] for w in windows])
        np.testing.assert_array_equal(row_x, tokens[b * per: (b + 1) * per])
        np.testing.assert_array_equal(row_y, tokens[b * per + 1: (b + 1) * per + 1])
        row_r = np.concatenate([w.resets[b, : w.lengths[b]] for w in windows])
        expected = starts[b * per: (b + 1) * per].copy()
        expected[0] = True
        np.testing.assert_array_equal(row_r, expected)
    resumed = list(stream_windows(tokens, batch, window, doc_starts=starts, start=3))
    assert len(resumed) == len(windows) - 3
    np.testing.assert_array_equal(resumed[0].x, windows[3].x)
    np.testing.assert_array_equal(resumed[0].resets, windows[3].resets)
    assert all(w.resets is None for w in stream_windows(tokens, batch, window))


@pytest.mark.parametrize("window,reach", [(4, 12), (3, 6), (5, 5)])
def test_reaching_stream_windows_lead_each_window_with_the_steps_before_it(window, reach):
    """Window i of reaching_stream_windows: the steps max(0, (i+1) window - reach) ..
    (i+1) window - 1 of every row, the leading ones' targets -1, the rest stream_windows'
    window i; `advance` is where the next window starts, counted from this one's start."""
    from rnnc.data import reaching_stream_windows

    tokens = np.arange(103) % 17
    starts = np.zeros(103, dtype=bool)
    starts[[20, 51]] = True
    batch, per = 2, 51
    rows = tokens[: batch * per].reshape(batch, per)
    starts_rows = starts[: batch * per].reshape(batch, per).copy()
    starts_rows[:, 0] = True
    plain = list(stream_windows(tokens, batch, window, doc_starts=starts))
    reaching = list(reaching_stream_windows(tokens, batch, window, reach, doc_starts=starts))
    assert len(reaching) == len(plain)
    for i, (p, r) in enumerate(zip(plain, reaching, strict=True)):
        first = max(0, (i + 1) * window - reach)
        pad = reach - window - (i * window - first)  # token 0 before the stream's start
        context = pad + i * window - first
        assert r.context == context and r.x.shape == (batch, reach)  # one call length
        assert pad % window == 0 and (pad == 0 or first == 0)
        assert np.all(r.x[:, :pad] == 0)
        assert np.array_equal(r.x[:, pad:context], rows[:, first: i * window])
        assert np.all(r.y[:, :context] == -1)
        assert np.array_equal(r.x[:, context:], p.x) and np.array_equal(r.y[:, context:], p.y)
        assert np.array_equal(r.resets[:, context:], p.resets)
        assert np.array_equal(r.resets[:, pad:context], starts_rows[:, first: i * window])
        assert not r.resets[:, :pad].any() and (pad == 0 or r.resets[:, pad].all())
        assert np.array_equal(r.lengths, p.lengths + context)
        next_first = max(0, (i + 2) * window - reach)
        assert r.advance == next_first - first
    resumed = list(reaching_stream_windows(tokens, batch, window, reach, starts, start=3))
    for a, b in zip(resumed, reaching[3:], strict=True):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and a.advance == b.advance
    no_docs = list(reaching_stream_windows(tokens, batch, window, reach))  # reset: none
    for i, (a, b) in enumerate(zip(no_docs, reaching, strict=True)):
        pad = reach - window - (i * window - max(0, (i + 1) * window - reach))
        want = np.zeros((batch, reach), bool)  # a reset only where the stream starts
        want[:, pad] = pad > 0
        assert np.array_equal(a.x, b.x) and np.array_equal(a.resets, want)
    with pytest.raises(DataError, match="must be a multiple of the window"):
        list(reaching_stream_windows(tokens, batch, 4, 10))


def test_stream_windows_errors():
    with pytest.raises(DataError, match="too short"):
        stream_windows(np.arange(5), 8, 2)
    with pytest.raises(DataError, match="1-D"):
        stream_windows(np.zeros((2, 5)), 1, 2)
    with pytest.raises(DataError, match="start window"):
        stream_windows(np.arange(100), 2, 10, start=99)
    with pytest.raises(DataError, match="batch size"):
        iterate_batches(build("adding").train, 0, None)


def test_text_stream_batching(tmp_path):
    write(tmp_path, "t.txt", "hello world, " * 300)
    ds = build_dataset("text", {"path": "t.txt", "window": 20}, 0, base_dir=tmp_path)
    batches = list(stream_windows(ds.stream["train"], 8, 20, ds.doc_starts["train"]))
    assert len(batches) == num_stream_windows(len(ds.stream["train"]), 8, 20)
    assert isinstance(batches[0], Batch) and batches[0].resets[:, 0].all()


# ---------------------------------------------------------------------------
# iterate_batches


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), batch=st.integers(1, 12), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_iterate_batches_covers_every_example_once(n, batch, shuffle, drop_last, seed):
    split = Split(x=np.arange(n, dtype=np.int32)[:, None], y=np.arange(n, dtype=np.int32),
                  lengths=np.ones(n, dtype=np.int32),
                  legal=np.zeros((n, 1, 3), dtype=bool))
    rng = np.random.default_rng(seed) if shuffle else None
    batches = list(iterate_batches(split, batch, rng, drop_last=drop_last))
    ids = np.concatenate([b.x[:, 0] for b in batches]) if batches else np.array([], int)
    for b in batches:
        np.testing.assert_array_equal(b.x[:, 0], b.y)  # rows stay together
        assert b.legal.shape == (len(b), 1, 3)
        assert len(b) == batch or (b is batches[-1] and not drop_last)
    if drop_last:
        assert len(ids) == (n // batch) * batch and len(set(ids.tolist())) == len(ids)
    else:
        assert sorted(ids.tolist()) == list(range(n))
        if not shuffle:
            assert ids.tolist() == list(range(n))


# ---------------------------------------------------------------------------
# npz


def test_npz_load_and_infer(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(40, 6))
    lengths = rng.integers(1, 7, size=40)
    np.savez(tmp_path / "d.npz", x=x, y=x.copy(), lengths=lengths)
    ds = build_dataset("npz", {"path": "d.npz"}, 0, base_dir=tmp_path)
    check_consistent(ds)
    assert ds.task == "classify_step" and ds.input == "tokens" and ds.n_in == x.max() + 1
    assert sum(len(s) for s in ds.splits.values()) == 40
    # each original row lands in exactly one split (rows are identified by x == y here)
    np.savez(tmp_path / "f.npz", x=rng.normal(size=(30, 4, 2)), y=np.arange(30.0)[:, None])
    ds = build_dataset("npz", {"path": "f.npz"}, 5, base_dir=tmp_path)
    assert ds.task == "regress_last" and ds.input == "features" and ds.n_in == 2
    ids = np.concatenate([s.y[:, 0] for s in ds.splits.values()])
    assert sorted(ids.tolist()) == list(range(30))
    np.savez(tmp_path / "c.npz", x=rng.normal(size=(30, 4, 2)), y=np.arange(30) % 3)
    ds = build_dataset("npz", {"path": "c.npz", "n_out": 5}, 0, base_dir=tmp_path)
    assert ds.task == "classify_last" and ds.n_out == 5 and ds.metric == "accuracy"


def _npz_reference(x, y, lengths, fractions, seed):
    """What build_npz gave before it read features block by block and split in place:
    float64 copies with padded steps zeroed, cut by split_examples."""
    from rnnc.data.core import Split, make_rngs, split_examples

    x = x.astype(np.float64) if x.ndim == 3 else x.astype(np.int32)
    y = y.astype(np.float64) if y.dtype.kind == "f" else y.astype(np.int32)
    pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]
    x[pad] = 0
    if y.ndim >= 2:
        y[pad] = 0
    _, split_rng = make_rngs(seed, 2)
    return split_examples(Split(x=x, y=y, lengths=lengths.astype(np.int32)), fractions,
                          split_rng, "npz")


@pytest.mark.parametrize("kind", ["float32", ">f4", "float16", "float64", "fortran", "tokens",
                                  "regress_step"])
def test_npz_splits_are_unchanged_by_the_low_memory_load(tmp_path, kind, monkeypatch):
    """Features read block by block into float64 (blocks smaller than a row, and not a
    whole number of them) and the splits reordered in place give the arrays the whole-file
    load and split_examples' copies gave, whatever the file's dtype and order."""
    from rnnc.data import files

    monkeypatch.setattr(files, "_BLOCK_BYTES", 100)
    rng = np.random.default_rng(3)
    n, t = 37, 5
    lengths = rng.integers(1, t + 1, n)
    x = rng.normal(size=(n, t, 3)).astype(kind if kind not in ("fortran", "tokens",
                                                              "regress_step") else "f4")
    if kind == "fortran":
        x = np.asfortranarray(x)
    if kind == "tokens":
        x = rng.integers(0, 6, (n, t))
    y = rng.normal(size=(n, t, 2)) if kind == "regress_step" else rng.integers(0, 4, n)
    np.savez(tmp_path / "d.npz", x=x, y=y, lengths=lengths)
    ds = build_dataset("npz", {"path": "d.npz", "split": [0.6, 0.25, 0.15]}, 7,
                       base_dir=tmp_path)
    want = _npz_reference(x, y, lengths, [0.6, 0.25, 0.15], 7)
    for got, ref in zip(ds.splits.values(), want, strict=True):
        for a, b in ((got.x, ref.x), (got.y, ref.y), (got.lengths, ref.lengths)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_npz_features_load_without_copies(tmp_path, monkeypatch):
    """Loading float32 features peaked at ~5x the file's size (the file's bytes, the
    float32 array, its float64 copy, a copy to zero the padding, the splits' copies);
    now at about the float64 array's size (traced allocations, blocks of 64 KB)."""
    import hashlib
    import json
    import tracemalloc

    from rnnc.data import files

    monkeypatch.setattr(files, "_BLOCK_BYTES", 1 << 16)
    rng = np.random.default_rng(0)
    n, t, f = 400, 50, 50
    x = rng.standard_normal((n, t, f), dtype=np.float32)
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(n) % 3, lengths=rng.integers(1, t + 1, n))
    float64_bytes = x.size * 8
    del x
    tracemalloc.start()
    try:
        ds = build_dataset("npz", {"path": "big.npz"}, 0, base_dir=tmp_path)
        fingerprint = ds.fingerprint()  # what a run records: it copied every array too
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(len(s) for s in ds.splits.values()) == n
    assert peak < 1.3 * float64_bytes, peak / float64_bytes
    # the fingerprint hashes the same bytes as before (runs recorded it)
    h = hashlib.sha256()
    h.update(json.dumps([ds.task, ds.input, ds.n_in, ds.n_out, ds.vocab]).encode("utf-8"))
    for split in ds.splits.values():
        for a in (split.x, split.y, split.lengths, split.resets):
            if a is None:
                h.update(b"-")
                continue
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    assert fingerprint == h.hexdigest()


def test_permute_rows_in_place():
    from rnnc.data.core import permute_rows

    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 9, 50):
        a = rng.normal(size=(n, 3))
        index = rng.permutation(n)
        index[: n // 3] = np.sort(index[: n // 3]) if n else index[:0]  # some fixed points
        index = np.argsort(np.argsort(index))  # still a permutation
        want = a[index]
        permute_rows(a, index)
        np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("arrays, options, message", [
    ({"x": np.zeros((4, 3), int)}, {}, "has no array 'y'"),
    ({"y": np.zeros(4, int)}, {}, "has no array 'x'"),
    ({"x": np.zeros(4, int), "y": np.zeros(4, int)}, {}, "'x' .* has rank 1"),
    ({"x": np.zeros((4, 3, 2), int), "y": np.zeros(4, int)}, {}, "'x' .* dtype int"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros(5, int)}, {}, "'y' .* has 5 examples .* 'x' has 4"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros(4, int), "lengths": np.array([1, 2, 3, 4])}, {},
     r"'lengths' .* out of range: lengths\[3\] = 4, expected 1 to 3"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros(4, int), "lengths": np.array([0, 2, 3, 3])}, {},
     "out of range"),
    ({"x": np.full((4, 3, 1), np.nan), "y": np.zeros(4, int)}, {}, r"NaN .* at \[0, 0, 0\]"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros((4, 2), int)}, {}, "'y' .* has 2 steps"),
    ({"x": np.zeros((4, 3), int), "y": np.full(4, 0.5)}, {"task": "classify_last"},
     "integer class ids"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros(4, int)}, {"task": "classify"}, "unknown task"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros((4, 3, 2, 1))}, {}, "cannot infer the task"),
    # ids beyond int32 used to wrap around silently (2**40 became class 0, n_out 1)
    ({"x": np.zeros((4, 3), int), "y": np.full(4, 2**40)}, {},
     r"'y' .* class id 1099511627776 at \[0\], larger than rnnc supports"),
    ({"x": np.zeros((4, 3), int), "y": np.full(4, 3e9)}, {"task": "classify_last"},
     "class id 3000000000.0 at"),
    ({"x": np.full((4, 3), 2**63, np.uint64), "y": np.zeros(4, int)}, {},
     r"'x' .* token id 9223372036854775808 at \[0, 0\]"),
    # complex targets used to lose their imaginary part with only a ComplexWarning
    ({"x": np.zeros((4, 3, 1)), "y": np.ones(4, complex)}, {}, "dtype complex128, expected real"),
])
def test_npz_errors(tmp_path, arrays, options, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        build_dataset("npz", {"path": "bad.npz", "split": [0.5, 0.25, 0.25], **options}, 0,
                      base_dir=tmp_path)


def test_npz_array_too_large_for_memory(tmp_path):
    """A header announcing a huge array: one DataError naming the file (was MemoryError)."""
    import io
    import zipfile

    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000000, 3, 3), }"
    header = header.ljust(117) + "\n"
    y = io.BytesIO()
    np.save(y, np.zeros(4, int))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                   + header.encode())
        z.writestr("y.npy", y.getvalue())
    with pytest.raises(DataError, match="huge.npz holds an array too large"):
        build_dataset("npz", {"path": "huge.npz"}, 0, base_dir=tmp_path)


def test_paths_that_cannot_be_files(tmp_path):
    """A NUL character or a ~user without a home folder: one DataError (were ValueError
    and RuntimeError from pathlib)."""
    with pytest.raises(DataError, match="option 'path' of dataset 'text' must be a file path"):
        build_dataset("text", {"path": "a\0b.txt"}, 0, base_dir=tmp_path)
    with pytest.raises(DataError, match="whose ~ names a home folder"):
        build_dataset("text", {"path": "~no_such_user_rnnc/x.txt"}, 0, base_dir=tmp_path)


def test_npz_not_an_archive(tmp_path):
    write(tmp_path, "junk.npz", b"this is not a zip file")
    with pytest.raises(DataError, match="not an .npz archive"):
        build_dataset("npz", {"path": "junk.npz"}, 0, base_dir=tmp_path)
    with pytest.raises(DataError, match="npz file not found"):
        build_dataset("npz", {"path": "nothere.npz"}, 0, base_dir=tmp_path)


# ---------------------------------------------------------------------------
# csv


def series_csv(tmp_path, rows=200):
    t = np.arange(rows)
    lines = ["time,temp,load"] + [f"{i},{np.sin(i / 5):.6f},{i % 7}" for i in t]
    return write(tmp_path, "series.csv", "\n".join(lines) + "\n")


def test_csv_windows_and_normalization(tmp_path):
    series_csv(tmp_path)
    ds = build_dataset("csv", {"path": "series.csv", "targets": ["temp"], "window": 10,
                               "horizon": 2}, 0, base_dir=tmp_path)
    check_consistent(ds)
    assert ds.task == "regress_step" and ds.n_in == 2 and ds.n_out == 1
    assert ds.info["columns"] == ["time", "load"] and ds.info["split_rows"]["train"] == 160
    stats = ds.info["normalize"]["stats"]
    raw = np.array([[i, np.sin(i / 5), i % 7] for i in range(160)])
    assert stats["time"]["mean"] == pytest.approx(raw[:, 0].mean())
    assert stats["temp"]["std"] == pytest.approx(raw[:, 1].std(), rel=1e-5)
    # x rows s..s+9 of (time, load); y = temp two rows later, all z-scored with train stats
    assert len(ds.train) == (160 - 12) // 10 + 1
    denorm_time = ds.train.x[1, :, 0] * stats["time"]["std"] + stats["time"]["mean"]
    np.testing.assert_allclose(denorm_time, np.arange(10, 20))
    temp = ds.train.y[1, :, 0] * stats["temp"]["std"] + stats["temp"]["mean"]
    np.testing.assert_allclose(temp, np.sin(np.arange(12, 22) / 5), atol=1e-5)
    assert abs(ds.train.x[..., 0].mean()) < 0.2  # roughly centred on train
    # val windows are normalised with the train statistics, so they are not centred
    assert ds.val.x[..., 0].mean() > 1.0
    mm = build_dataset("csv", {"path": "series.csv", "targets": "temp", "columns": ["load"],
                               "window": 5, "stride": 2, "normalize": "minmax"}, 0,
                       base_dir=tmp_path)
    assert mm.n_in == 1 and 0 <= mm.train.x.min() and mm.train.x.max() <= 1
    assert len(mm.train) == (160 - 6) // 2 + 1


def test_csv_errors(tmp_path):
    opts = {"targets": ["temp"], "window": 10}
    with pytest.raises(DataError, match="CSV file not found"):
        build_dataset("csv", {"path": "none.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "empty.csv", "")
    with pytest.raises(DataError, match="CSV file .*empty.csv is empty"):
        build_dataset("csv", {"path": "empty.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "header.csv", "temp,load\n")
    with pytest.raises(DataError, match="has a header but no data rows"):
        build_dataset("csv", {"path": "header.csv", **opts}, 0, base_dir=tmp_path)
    series_csv(tmp_path)
    with pytest.raises(DataError, match="unknown column 'tmp' in CSV file") as err:
        build_dataset("csv", {"path": "series.csv", "targets": ["tmp"]}, 0, base_dir=tmp_path)
    assert err.value.hint == "did you mean 'temp'?"
    write(tmp_path, "text.csv", "temp,load\n1,2\n3,abc\n4,5\n")
    with pytest.raises(DataError, match="non-numeric value 'abc' in row 2 \\(line 3\\), "
                                        "column 'load'"):
        build_dataset("csv", {"path": "text.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "hole.csv", "temp,load\n1,2\n3,\n")
    with pytest.raises(DataError, match="an empty cell in row 2"):
        build_dataset("csv", {"path": "hole.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "few.csv", "temp,load\n" + "1,2\n" * 8)
    with pytest.raises(DataError, match="has 8 data rows, fewer than one window needs "
                                        r"\(10 steps \+ horizon 1 = 11 rows\)"):
        build_dataset("csv", {"path": "few.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "mid.csv", "temp,load\n" + "1,2\n" * 50)
    with pytest.raises(DataError, match="the val part of CSV file .* has 5 rows"):
        build_dataset("csv", {"path": "mid.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "ragged.csv", "temp,load\n1,2\n3\n")
    with pytest.raises(DataError, match="row 2 \\(line 3\\) .* has 1 fields"):
        build_dataset("csv", {"path": "ragged.csv", **opts}, 0, base_dir=tmp_path)
    with pytest.raises(DataError, match="option 'normalize'") as err:
        build_dataset("csv", {"path": "series.csv", "targets": ["temp"], "normalize": "zscor"},
                      0, base_dir=tmp_path)
    assert err.value.hint == "did you mean 'zscore'?"
    # a file without a header row, or not comma-separated: say so (the first data row
    # was read as the header: "repeats column names: 0" or a bare "unknown column")
    write(tmp_path, "bare.csv", "".join(f"{i},{i % 3 + 5}\n" for i in range(1, 100)))
    with pytest.raises(DataError, match="unknown column 'temp' .* no header row "
                                        r"\(its first row holds numbers: 1, 6\)") as err:
        build_dataset("csv", {"path": "bare.csv", **opts}, 0, base_dir=tmp_path)
    assert "add a first row naming the columns" in err.value.hint
    write(tmp_path, "zeros.csv", "0,0\n" * 100)
    with pytest.raises(DataError, match=r"repeats column names \(0\): .* no header row"):
        build_dataset("csv", {"path": "zeros.csv", **opts}, 0, base_dir=tmp_path)
    write(tmp_path, "semi.csv", "temp;load\n" + "1;2\n" * 100)
    with pytest.raises(DataError, match="single column 'temp;load', .* separated by ';'"):
        build_dataset("csv", {"path": "semi.csv", **opts}, 0, base_dir=tmp_path)
    # numbers are fine as column names that are asked for
    write(tmp_path, "years.csv", "2020,2021\n" + "".join(f"{i},{i}\n" for i in range(200)))
    ds = build_dataset("csv", {"path": "years.csv", "targets": ["2021"], "window": 10}, 0,
                       base_dir=tmp_path)
    assert ds.info["columns"] == ["2020"]
    # a non-numeric column is fine when it is not used
    write(tmp_path, "dated.csv", "date,temp\n" + "".join(f"d{i},{i}\n" for i in range(300)))
    ds = build_dataset("csv", {"path": "dated.csv", "targets": ["temp"], "columns": ["temp"],
                               "window": 10}, 0, base_dir=tmp_path)
    assert ds.n_in == 1


# ---------------------------------------------------------------------------
# Metrics


def test_reber_accuracy_hand_built():
    legal = np.zeros((1, 4, 4), dtype=bool)
    legal[0, 0, [0, 1]] = True   # two legal symbols
    legal[0, 1, [2]] = True      # one legal symbol
    legal[0, 2, [1, 3]] = True
    legal[0, 3, [0]] = True      # beyond the length: ignored
    probs = np.array([[[0.4, 0.4, 0.1, 0.1],     # top-2 = {0, 1}: right
                       [0.1, 0.2, 0.6, 0.1],     # top-1 = {2}: right
                       [0.5, 0.3, 0.0, 0.2],     # top-2 = {0, 1} != {1, 3}: wrong
                       [0.0, 1.0, 0.0, 0.0]]])   # padding
    assert reber_accuracy(probs, legal, np.array([3])) == pytest.approx(2 / 3)
    assert reber_accuracy(probs, legal, np.array([2])) == 1.0
    assert reber_string_accuracy(probs, legal, np.array([3])) == 0.0
    assert reber_string_accuracy(probs, legal, np.array([2])) == 1.0
    tie = np.array([[[0.3, 0.3, 0.3, 0.1]] * 4])  # tie between legal and illegal: wrong
    assert reber_accuracy(tie, legal, np.array([1])) == 0.0
    assert reber_accuracy(np.log(probs + 1e-9), legal, np.array([3])) == pytest.approx(2 / 3)


def test_reber_accuracy_perfect_on_legal_sets():
    ds = build("embedded_reber")
    split = ds.test
    probs = split.legal / np.maximum(split.legal.sum(-1, keepdims=True), 1)
    result = evaluate_outputs("reber_accuracy", probs, split)
    assert result["reber_accuracy"] == 1.0 and result["reber_string_accuracy"] == 1.0
    assert set(result) == {"reber_accuracy", "reber_string_accuracy", "accuracy",
                           "cross_entropy"}


def test_class_metrics_leave_out_unscored_targets():
    """A class target -1 is not scored: accuracy and cross_entropy are the means over the
    other (valid) steps, computed here by hand; -2 is still out of range."""
    y = np.array([[1, -1, 2], [-1, 2, 0]])
    logits = np.zeros((2, 3, 3))
    logits[0, 0, 1] = logits[0, 1, 0] = logits[1, 1, 1] = logits[1, 2, 0] = 5
    lengths = np.array([3, 2])
    # scored, valid: (0, 0) right, (0, 2) wrong, (1, 1) wrong; (1, 2) is padding
    assert accuracy(logits, y, lengths) == pytest.approx(1 / 3)
    assert accuracy(logits, y) == pytest.approx(2 / 4)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log([probs[0, 0, 1], probs[0, 2, 2], probs[1, 1, 2]])
    assert cross_entropy(probs, y, lengths, "probs") == pytest.approx(nll.mean(), rel=1e-12)
    assert cross_entropy(logits, y, lengths, "logits") == pytest.approx(nll.mean(), rel=1e-12)
    assert accuracy(logits[:, 0], np.array([1, -1])) == 1.0
    assert math.isnan(accuracy(logits, np.full((2, 3), -1)))
    batch = Batch(x=np.zeros((2, 3), dtype=np.int32), y=y, lengths=lengths)
    out = evaluate_outputs("accuracy", probs, batch)
    assert out["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(DataError, match="targets range over -2"):
        cross_entropy(probs, y - 1, lengths)


def test_accuracy_mse_cross_entropy():
    y = np.array([[1, 0, 2], [2, 2, 0]])
    logits = np.zeros((2, 3, 3))
    logits[0, 0, 1] = logits[0, 1, 0] = logits[0, 2, 0] = 5   # 2 of 3 right
    logits[1, 0, 2] = logits[1, 1, 1] = 5                     # 1 of 2 valid right
    lengths = np.array([3, 2])
    assert accuracy(logits, y, lengths) == pytest.approx(3 / 5)
    assert accuracy(logits, y) == pytest.approx(4 / 6)  # padding counts without lengths
    assert accuracy(logits[:, -1], np.array([0, 1])) == 0.5
    # per-sequence targets read per-step outputs at the last valid step
    assert accuracy(logits, np.array([0, 1]), lengths) == 1.0
    uniform = np.full((2, 3, 3), 1 / 3)
    assert cross_entropy(uniform, y, lengths) == pytest.approx(math.log(3))
    assert cross_entropy(np.zeros((2, 3, 3)), y, lengths) == pytest.approx(math.log(3))
    pred, target = np.zeros((2, 3, 1)), np.ones((2, 3, 1))
    pred[1, 2] = 100.0  # padding, ignored
    assert mse(pred, target, np.array([3, 2])) == 1.0
    assert mse(np.array([[1.0], [3.0]]), np.array([[0.0], [1.0]])) == pytest.approx(2.5)
    batch = Batch(x=np.zeros((2, 3, 1)), y=target, lengths=np.array([3, 2]))
    assert evaluate_outputs("mse", pred, batch) == {"mse": 1.0, "rmse": 1.0}
    with pytest.raises(DataError, match="unknown metric 'acc'"):
        evaluate_outputs("acc", pred, batch)
    with pytest.raises(DataError, match="mse: predictions of shape"):
        mse(np.zeros((2, 4, 1)), target)


def test_evaluate_outputs_accuracy_on_copy():
    ds = build("copy")
    onehot = np.eye(ds.n_out)[ds.val.y]
    result = evaluate_outputs("accuracy", onehot, ds.val)
    assert result["accuracy"] == 1.0 and result["cross_entropy"] < 1e-6


def test_copy_metrics_of_a_memoryless_model_are_the_documented_baseline():
    """The copy task's accuracy counts every step, blanks included: docs/language.md
    gives what a model that remembers nothing scores (0.78 and 0.52 by default)."""
    ds = build_dataset("copy", {"n": 4000}, seed=0)
    k, delay, symbols = 10, 20, 8
    probs = np.zeros(ds.test.y.shape + (ds.n_out,))
    probs[:, : k + delay, 0] = 1.0  # blanks while waiting
    probs[:, k + delay:, 1:] = 1.0 / symbols  # then a uniform guess (argmax: symbol 1)
    result = evaluate_outputs("accuracy", probs, ds.test)
    assert result["cross_entropy"] == pytest.approx(ds.info["baseline_cross_entropy"])
    assert result["cross_entropy"] == pytest.approx(0.52, abs=0.005)
    assert result["accuracy"] == pytest.approx((k + delay + k / symbols) / (2 * k + delay),
                                               abs=0.01)
    doc = (Path(__file__).parents[1] / "docs" / "language.md").read_text(encoding="utf-8")
    assert "0.78 with the defaults; cross-entropy K ln S / (2K + D), 0.52" in doc


def test_zscore_inputs_uses_train_statistics_and_keeps_padding():
    from rnnc.data.core import zscore_inputs

    ds = build_dataset("adding", {"n": 200, "length": 12}, seed=3)
    ds.train.lengths[:5] = 6  # some padded rows
    ds.train.x[:5, 6:] = 0.0
    z = zscore_inputs(ds)
    x, lengths = z.train.x, z.train.lengths
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    np.testing.assert_allclose(x[valid].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(x[valid].std(axis=0), 1.0, atol=1e-12)
    assert np.all(x[:5, 6:] == 0.0)
    stats = z.info["input_normalization"]
    mean, std = np.array(stats["mean"]), np.array(stats["std"])
    np.testing.assert_allclose(z.test.x[:, 0], (ds.test.x[:, 0] - mean) / std)
    tokens = build_dataset("reber", {"n": 20}, seed=0)
    assert zscore_inputs(tokens) is tokens


def test_cross_entropy_of_probabilities_logs_only_the_targets():
    """Probabilities are scored at the targets only: no float64 copy and log of every
    class (that took 24 bytes per step and class more than the outputs themselves)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(2000), size=(1, 500)).astype(np.float32)
    probs[0, 0] = 0.0  # a target of probability 0 counts as 1e-12
    y = rng.integers(0, 2000, size=(1, 500))
    want = -np.log(np.maximum(probs[0, np.arange(500), y[0]].astype(np.float64), 1e-12)).mean()
    tracemalloc.start()
    try:
        got = cross_entropy(probs, y, outputs_are="probs")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == pytest.approx(want, rel=1e-12)
    assert peak < probs.nbytes // 4
