"""Evaluation metrics on model outputs (numpy).

``outputs`` are per-class scores: probabilities (each row non-negative, summing to
1) or logits; functions that need log-probabilities detect which (see
:func:`log_probabilities`). Shapes: N examples, T steps, V classes, Y outputs.
Every mean is over valid steps only (``t < lengths[n]``). A class target of -1 is not
scored (as in the generated modules): :func:`accuracy` and :func:`cross_entropy` leave
it out of their means.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rnnc.errors import DataError, unknown


METRICS = ("reber_accuracy", "accuracy", "mse")
"""Headline metric names a dataset can declare."""


def step_mask(lengths: np.ndarray | None, n: int, steps: int) -> np.ndarray:
    """``(N, T)`` bool: True at valid steps (all True when ``lengths`` is None)."""
    if lengths is None:
        return np.ones((n, steps), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,):
        raise DataError(f"lengths has shape {lengths.shape}, expected ({n},)")
    return np.arange(steps)[None, :] < lengths[:, None]


def scored_mask(y: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Where class targets ``y`` count: ``(N, T)`` valid steps, or ``(N,)`` sequences,
    whose target is not -1 (not scored)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y != -1
    return step_mask(lengths, *y.shape) & (y != -1)


def last_step(outputs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """``(N, T, ...)`` -> ``(N, ...)``: each sequence's output at its last valid step."""
    n, steps = outputs.shape[:2]
    if lengths is None:
        return outputs[:, -1]
    idx = np.clip(np.asarray(lengths).astype(np.int64) - 1, 0, steps - 1)
    return outputs[np.arange(n), idx]


def _check_shape(outputs: np.ndarray, expected: tuple, what: str) -> None:
    if outputs.shape[: len(expected)] != expected:
        raise DataError(f"{what}: outputs have shape {outputs.shape}, expected leading "
                        f"dimensions {expected}")


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    count = int(mask.sum())
    return float(values[mask].sum() / count) if count else math.nan


def _class_scores(outputs: Any, y: np.ndarray, lengths: Any, what: str) -> np.ndarray:
    """Outputs aligned with class targets ``y``: ``(N, T, V)`` for ``(N, T)`` y, or
    ``(N, V)`` for ``(N,)`` y (per-step outputs are reduced to the last valid step)."""
    outputs = np.asarray(outputs)
    if y.ndim == 1 and outputs.ndim == 3:
        outputs = last_step(outputs, lengths)
    if outputs.ndim != y.ndim + 1:
        raise DataError(f"{what}: outputs of shape {outputs.shape} do not match targets of "
                        f"shape {y.shape} (expected one more axis, the classes)")
    _check_shape(outputs, y.shape, what)
    return outputs


def accuracy(outputs: Any, y: Any, lengths: Any = None) -> float:
    """Fraction of valid steps (``y`` ``(N, T)``) or sequences (``y`` ``(N,)``) whose
    highest-scoring class is the target.

    ``outputs``: ``(N, T, V)`` or ``(N, V)`` probabilities or logits. For a per-sequence
    ``y`` ``(N,)``, per-step outputs ``(N, T, V)`` are read at step ``lengths - 1``.
    """
    y = np.asarray(y)
    outputs = _class_scores(outputs, y, lengths, "accuracy")
    correct = outputs.argmax(-1) == y
    return _masked_mean(correct, scored_mask(y, lengths))


def log_probabilities(outputs: Any, outputs_are: str = "auto") -> np.ndarray:
    """Log-probabilities over the last axis of probabilities or logits.

    ``outputs_are``: ``"probs"``, ``"logits"`` or ``"auto"`` (probabilities when every
    value is in [0, 1] and every row sums to 1 within 1e-3, else logits).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs_are == "auto":
        is_probs = (outputs.size > 0 and outputs.min() >= 0 and outputs.max() <= 1
                    and np.allclose(outputs.sum(-1), 1.0, atol=1e-3))
        outputs_are = "probs" if is_probs else "logits"
    if outputs_are == "probs":
        return np.log(np.maximum(outputs, 1e-12))
    if outputs_are == "logits":
        shifted = outputs - outputs.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    raise DataError(f"outputs_are must be 'auto', 'probs' or 'logits', got {outputs_are!r}")


def cross_entropy(outputs: Any, y: Any, lengths: Any = None, outputs_are: str = "auto") -> float:
    """Mean negative log-likelihood of the targets, in nats per valid step (or per
    sequence for ``y`` ``(N,)``). Divide by ``ln 2`` for bits per character."""
    y = np.asarray(y)
    outputs = _class_scores(outputs, y, lengths, "cross_entropy")
    if y.size and (y.min() < -1 or y.max() >= outputs.shape[-1]):
        raise DataError(f"cross_entropy: targets range over {y.min()}..{y.max()}, but the "
                        f"outputs have {outputs.shape[-1]} classes (-1: not scored)")
    picked = np.maximum(y, 0)[..., None].astype(np.int64)  # -1: any class, left out below
    if outputs_are == "probs":
        # only the targets' probabilities are needed: picked before the float64 log
        # (not a float64 copy and log of every class)
        p = np.take_along_axis(outputs, picked, -1)[..., 0]
        nll = -log_probabilities(p[..., None], "probs")[..., 0]
    else:
        nll = -np.take_along_axis(log_probabilities(outputs, outputs_are), picked, -1)[..., 0]
    return _masked_mean(nll, scored_mask(y, lengths))


def mse(pred: Any, y: Any, lengths: Any = None) -> float:
    """Mean squared error over valid steps and outputs.

    ``pred`` and ``y``: ``(N, T, Y)`` (per step, masked by ``lengths``) or ``(N, Y)``
    (per sequence; per-step predictions ``(N, T, Y)`` are read at step ``lengths - 1``).
    """
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and pred.ndim == 3:
        pred = last_step(pred, lengths)
    if pred.shape != y.shape:
        raise DataError(f"mse: predictions of shape {pred.shape} do not match targets of "
                        f"shape {y.shape}")
    sq = (pred - y) ** 2
    if y.ndim == 3:
        mask = step_mask(lengths, y.shape[0], y.shape[1])
        count = int(mask.sum()) * y.shape[2]
        return float(sq[mask].sum() / count) if count else math.nan
    return float(sq.mean()) if sq.size else math.nan


def _reber_correct(outputs: Any, legal: Any) -> np.ndarray:
    """``(N, T)`` bool: the top-k symbols are exactly the k legal ones."""
    outputs, legal = np.asarray(outputs, dtype=np.float64), np.asarray(legal, dtype=bool)
    if outputs.shape != legal.shape or outputs.ndim != 3:
        raise DataError(f"reber_accuracy: outputs of shape {outputs.shape} do not match "
                        f"legal of shape {legal.shape} (both must be (N, T, V))")
    lowest_legal = np.where(legal, outputs, np.inf).min(-1)
    highest_illegal = np.where(legal, -np.inf, outputs).max(-1)
    return lowest_legal > highest_illegal


def reber_accuracy(probs: Any, legal: Any, lengths: Any) -> float:
    """Fraction of valid steps at which the k most probable symbols are exactly the k
    symbols the grammar allows (k = ``legal[n, t].sum()``).

    ``probs`` ``(N, T, V)`` (probabilities or logits: only the ranking matters),
    ``legal`` ``(N, T, V)`` bool, ``lengths`` ``(N,)``. A tie between a legal and an
    illegal symbol counts as wrong.
    """
    correct = _reber_correct(probs, legal)
    return _masked_mean(correct, step_mask(lengths, *correct.shape))


def reber_string_accuracy(probs: Any, legal: Any, lengths: Any) -> float:
    """Fraction of strings whose every valid step is right in the sense of
    :func:`reber_accuracy` (the criterion of Hochreiter & Schmidhuber 1997)."""
    correct = _reber_correct(probs, legal)
    mask = step_mask(lengths, *correct.shape)
    return float((correct | ~mask).all(-1).mean()) if len(correct) else math.nan


def evaluate_outputs(dataset_metric: str, outputs: Any, split_or_batch: Any,
                     outputs_are: str = "auto") -> dict[str, float]:
    """All metrics that apply to a dataset's headline metric, as ``{name: value}``.

    ``split_or_batch``: a :class:`~rnnc.data.Split` or :class:`~rnnc.data.Batch` (its
    ``y``, ``lengths`` and, for Reber, ``legal`` are used). Returns

    * ``"reber_accuracy"``: reber_accuracy, reber_string_accuracy, accuracy, cross_entropy
    * ``"accuracy"``: accuracy, cross_entropy
    * ``"mse"``: mse, rmse
    """
    y, lengths = split_or_batch.y, split_or_batch.lengths
    if dataset_metric == "mse":
        value = mse(outputs, y, lengths)
        return {"mse": value, "rmse": math.sqrt(value) if value == value else math.nan}
    if dataset_metric not in METRICS:
        raise unknown("metric", str(dataset_metric), METRICS, cls=DataError)
    out: dict[str, float] = {}
    if dataset_metric == "reber_accuracy":
        legal = getattr(split_or_batch, "legal", None)
        if legal is None:
            raise DataError("metric 'reber_accuracy' needs the legal next symbols, but this "
                            "data has none", hint="it applies to the reber datasets only")
        out["reber_accuracy"] = reber_accuracy(outputs, legal, lengths)
        out["reber_string_accuracy"] = reber_string_accuracy(outputs, legal, lengths)
    out["accuracy"] = accuracy(outputs, y, lengths)
    out["cross_entropy"] = cross_entropy(outputs, y, lengths, outputs_are)
    return out
