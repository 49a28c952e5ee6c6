"""Generated benchmark tasks: adding, copy, temporal order, noisy sine and sine generation.

Each builder draws all examples from one generator seeded by the dataset seed,
then shuffles them into train/val/test with a second, independent generator.
"""

from __future__ import annotations

import math

import numpy as np

from rnnc.data.core import Dataset, Options, Split, make_rngs, split_examples


ADDING_DEFAULTS = {"n": 10000, "length": 50, "split": [0.8, 0.1, 0.1]}
COPY_DEFAULTS = {"n": 10000, "symbols": 8, "copy_length": 10, "delay": 20,
                 "split": [0.8, 0.1, 0.1]}
TEMPORAL_ORDER_DEFAULTS = {"n": 4000, "length": 100, "relevant": 2, "split": [0.8, 0.1, 0.1]}
SINE_DEFAULTS = {"n": 2000, "length": 50, "noise": 0.05, "split": [0.8, 0.1, 0.1]}
SINE_GENERATION_DEFAULTS = {"n": 2000, "length": 50, "split": [0.8, 0.1, 0.1]}
SINE_GENERATION_FREQUENCIES = (0.02, 0.1)
"""The frequency range of sine_generation, in cycles per step (periods of 10 to 50)."""


def _finish(name: str, data: Split, opts: Options, split_rng: np.random.Generator,
            **fields) -> Dataset:
    train, val, test = split_examples(data, opts.fractions(), split_rng, name)
    return Dataset(name=name, train=train, val=val, test=test, **fields)


def build_adding(opts: Options, seed: int) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015).

    ``x`` ``(N, T, 2)``: channel 0 is a value drawn uniformly from [0, 1), channel 1 a
    marker that is 1 at exactly two steps -- one in the first half ``[0, T//2)``, one in
    the second half ``[T//2, T)`` -- and 0 elsewhere. ``y`` ``(N, 1)``: the sum of the
    two marked values. Predicting 1 always gives an MSE of about 0.167.
    """
    n = opts.integer("n", minimum=1)
    length = opts.integer("length", minimum=2)
    data_rng, split_rng = make_rngs(seed, 2)
    values = data_rng.uniform(0.0, 1.0, size=(n, length))
    half = length // 2
    first = data_rng.integers(0, half, size=n)
    second = data_rng.integers(half, length, size=n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second])[:, None]
    data = Split(x=x, y=y, lengths=np.full(n, length, dtype=np.int32))
    return _finish("adding", data, opts, split_rng, task="regress_last", input="features",
                   n_in=2, n_out=1, metric="mse",
                   info={"baseline_mse": 1.0 / 6.0,
                         "baseline": "predicting 1.0 always gives an MSE of 1/6"})


def build_copy(opts: Options, seed: int) -> Dataset:
    """The copy (memory) task (Arjovsky, Shah & Bengio 2016).

    With K = ``copy_length``, D = ``delay`` and S = ``symbols``, token ids are
    0 = blank, 1..S = data symbols, S + 1 = delimiter. Each input ``x`` ``(N, K + D + K)``
    is K random data symbols, D - 1 blanks, the delimiter, then K blanks; the target
    ``y`` ``(N, K + D + K)`` is blank for K + D steps, then the K data symbols. n_in =
    S + 2, n_out = S + 1. ``info["baseline_cross_entropy"]`` is the loss of the
    memoryless strategy (blanks, then uniform guesses).
    """
    n = opts.integer("n", minimum=1)
    symbols = opts.integer("symbols", minimum=1)
    k = opts.integer("copy_length", minimum=1)
    delay = opts.integer("delay", minimum=1)
    data_rng, split_rng = make_rngs(seed, 2)
    steps = k + delay + k
    data = data_rng.integers(1, symbols + 1, size=(n, k), dtype=np.int32)
    x = np.zeros((n, steps), dtype=np.int32)
    y = np.zeros((n, steps), dtype=np.int32)
    x[:, :k] = data
    x[:, k + delay - 1] = symbols + 1
    y[:, k + delay:] = data
    split = Split(x=x, y=y, lengths=np.full(n, steps, dtype=np.int32))
    vocab = ["_"] + [str(i) for i in range(1, symbols + 1)] + [":"]
    return _finish("copy", split, opts, split_rng, task="classify_step", input="tokens",
                   n_in=symbols + 2, n_out=symbols + 1, metric="accuracy", vocab=vocab,
                   info={"baseline_cross_entropy": k * math.log(symbols) / steps,
                         "blank": 0, "delimiter": symbols + 1})


TEMPORAL_ORDER_VOCAB = ["a", "b", "c", "d", "X", "Y", "B", "E"]
"""Token ids of the temporal order task: 4 distractors, the 2 relevant symbols, and
the end (B) and start (E) markers, named as in Hochreiter & Schmidhuber 1997."""

_ORDER_WINDOWS = {
    2: ((0.10, 0.20), (0.50, 0.60)),
    3: ((0.10, 0.20), (0.33, 0.43), (0.66, 0.76)),
}


def build_temporal_order(opts: Options, seed: int) -> Dataset:
    """The temporal order task (Hochreiter & Schmidhuber 1997, tasks 6a/6b).

    Each sequence starts with E and ends with B; every other step is a random
    distractor a-d, except ``relevant`` (2 or 3) steps holding X or Y, drawn in fixed
    windows (for length L = 100: steps 10-20 and 50-60; or 10-20, 33-43, 66-76).
    Sequence lengths vary uniformly in ``[length, length + length // 10]``, as in the
    paper (100-110). ``y`` ``(N,)``: the class of the X/Y order, reading X as 0 and Y
    as 1, first symbol most significant (XX=0, XY=1, YX=2, YY=3; 8 classes for 3).
    """
    n = opts.integer("n", minimum=1)
    length = opts.integer("length", minimum=20)
    relevant = opts.integer("relevant", minimum=2, maximum=3)
    data_rng, split_rng = make_rngs(seed, 2)
    max_len = length + length // 10
    lengths = data_rng.integers(length, max_len + 1, size=n).astype(np.int32)
    x = data_rng.integers(0, 4, size=(n, max_len)).astype(np.int32)  # distractors a-d
    bits = data_rng.integers(0, 2, size=(n, relevant))
    rows = np.arange(n)
    for j, (lo, hi) in enumerate(_ORDER_WINDOWS[relevant]):
        pos = data_rng.integers(int(lo * length), int(hi * length) + 1, size=n)
        x[rows, pos] = 4 + bits[:, j]  # X = 4, Y = 5
    x[:, 0] = TEMPORAL_ORDER_VOCAB.index("E")
    x[rows, lengths - 1] = TEMPORAL_ORDER_VOCAB.index("B")
    x[np.arange(max_len)[None, :] >= lengths[:, None]] = 0
    y = np.zeros(n, dtype=np.int32)
    for j in range(relevant):
        y = y * 2 + bits[:, j].astype(np.int32)
    classes = ["".join("XY"[(c >> (relevant - 1 - j)) & 1] for j in range(relevant))
               for c in range(2 ** relevant)]
    data = Split(x=x, y=y, lengths=lengths)
    return _finish("temporal_order", data, opts, split_rng, task="classify_last",
                   input="tokens", n_in=len(TEMPORAL_ORDER_VOCAB), n_out=2 ** relevant,
                   metric="accuracy", vocab=list(TEMPORAL_ORDER_VOCAB),
                   info={"classes": classes})


def build_sine(opts: Options, seed: int) -> Dataset:
    """Noisy sine next-step regression.

    ``x`` ``(N, T, 1)``: ``sin(w t + phi) + noise * eps`` with the angular frequency
    ``w = 2 pi f``, ``f`` uniform in [0.02, 0.2] cycles per step (periods of 5 to 50
    steps), ``phi`` uniform in [0, 2 pi) and ``eps`` standard normal. ``y`` ``(N, T, 1)``:
    the clean value at the next step, ``sin(w (t + 1) + phi)``.
    """
    n = opts.integer("n", minimum=1)
    length = opts.integer("length", minimum=1)
    noise = opts.number("noise", minimum=0.0)
    data_rng, split_rng = make_rngs(seed, 2)
    omega = 2 * np.pi * data_rng.uniform(0.02, 0.2, size=(n, 1))
    phase = data_rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    t = np.arange(length)[None, :]
    x = np.sin(omega * t + phase) + noise * data_rng.standard_normal((n, length))
    y = np.sin(omega * (t + 1) + phase)
    data = Split(x=x[..., None], y=y[..., None], lengths=np.full(n, length, dtype=np.int32))
    return _finish("sine", data, opts, split_rng, task="regress_step", input="features",
                   n_in=1, n_out=1, metric="mse",
                   info={"frequency_range": [0.02, 0.2], "noise": noise})



def build_sine_generation(opts: Options, seed: int) -> Dataset:
    """One-to-many: generate a sine wave from its frequency, given at the first step only.

    ``x`` ``(N, T, 2)``: at step 0, a start cue 1 and the frequency ``f`` scaled to
    [-1, 1] (``f`` uniform in [0.02, 0.1] cycles per step, periods of 10 to 50 steps);
    every later input is 0, so the model must carry the frequency in its state and
    unroll the wave itself. ``y`` ``(N, T, 1)``: ``sin(2 pi f (t + 1))`` at step t.
    ``info["baseline_mse"]``: the MSE of predicting 0 always (the data's mean square,
    about 0.5); a model that ignores the cue but learns the average wave does better,
    only one that reads the frequency gets near 0.
    """
    n = opts.integer("n", minimum=1)
    length = opts.integer("length", minimum=1)
    data_rng, split_rng = make_rngs(seed, 2)
    lo, hi = SINE_GENERATION_FREQUENCIES
    freq = data_rng.uniform(lo, hi, size=(n, 1))
    x = np.zeros((n, length, 2))
    x[:, 0, 0] = 1.0
    x[:, 0, 1] = (freq[:, 0] - (lo + hi) / 2) / ((hi - lo) / 2)
    y = np.sin(2 * np.pi * freq * (np.arange(length)[None, :] + 1))
    data = Split(x=x, y=y[..., None], lengths=np.full(n, length, dtype=np.int32))
    return _finish("sine_generation", data, opts, split_rng, task="regress_step",
                   input="features", n_in=2, n_out=1, metric="mse",
                   info={"frequency_range": list(SINE_GENERATION_FREQUENCIES),
                         "baseline_mse": float(np.mean(y ** 2)),
                         "baseline": "predicting 0 always"})
