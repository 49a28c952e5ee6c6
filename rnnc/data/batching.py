"""Mini-batches: shuffled batches of a Split, and stateful windows of a token stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rnnc.data.core import Split
from rnnc.errors import DataError


@dataclass(eq=False)
class Batch:
    """B examples of a split, or B parallel stream windows.

    Attributes:
        x: ``(B, T)`` int32 tokens or ``(B, T, F)`` float64 features.
        y: targets, laid out as in :class:`Split` with N = B.
        lengths: ``(B,)`` int32 valid steps per row.
        legal: ``(B, T, V)`` bool legal next symbols (Reber only).
        resets: ``(B, T)`` bool: state must be reset to zero before step t.
        context: steps at the start of every row that are not scored (their class ids
            in ``y`` are -1): they carry the state and the gradient only
            (:func:`reaching_stream_windows`); 0 otherwise.
        advance: how many steps after this window's first step the next window of the
            stream starts (0: at the same step) (:func:`reaching_stream_windows`).
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    legal: np.ndarray | None = None
    resets: np.ndarray | None = None
    context: int = 0
    advance: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise DataError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def iterate_batches(split: Split, batch: int, rng: np.random.Generator | None,
                    drop_last: bool = False) -> Iterator[Batch]:
    """Yield batches of up to ``batch`` examples covering ``split`` once.

    The order is shuffled with ``rng`` when one is given, else it is the split's
    order. The last, smaller batch is kept unless ``drop_last``.
    """
    batch = _positive(batch, "batch size")  # checked now, not at the first next()
    n = len(split)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch if drop_last else n
    return _batches(split, order, batch, stop)


def _batches(split: Split, order: np.ndarray, batch: int, stop: int) -> Iterator[Batch]:
    for begin in range(0, stop, batch):
        part = split.take(order[begin: begin + batch])
        yield Batch(x=part.x, y=part.y, lengths=part.lengths, legal=part.legal,
                    resets=part.resets)


def num_batches(n: int, batch: int, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields for ``n`` examples."""
    batch = _positive(batch, "batch size")
    return n // batch if drop_last else -(-n // batch)


def num_stream_windows(length: int, batch: int, window: int) -> int:
    """How many windows :func:`stream_windows` yields for a stream of ``length`` tokens:
    ``ceil(((length - 1) // batch) / window)`` (0 if the stream is too short)."""
    batch = _positive(batch, "batch size")
    window = _positive(window, "window")
    per_stream = max(int(length) - 1, 0) // batch
    return -(-per_stream // window)


def stream_windows(tokens: np.ndarray, batch: int, window: int,
                   doc_starts: np.ndarray | None = None, start: int = 0) -> Iterator[Batch]:
    """Stateful language-model batching of a 1-D token stream.

    The stream is cut into ``batch`` contiguous parallel streams of
    ``S = (len(tokens) - 1) // batch`` steps each (row b covers
    ``tokens[b*S : (b+1)*S]``; the remainder is dropped). Windows ``i = start, start+1,
    ...`` yield ``x`` ``(B, window)`` = steps ``i*window .. (i+1)*window - 1`` of every row
    and ``y`` = the tokens one position later, so the state at the end of window i is
    the right initial state for window i+1. If ``window`` does not divide S, the last
    window is padded with zeros and its ``lengths`` are ``S % window`` (all other
    windows have ``lengths == window``).

    With ``doc_starts`` (``(len(tokens),)`` bool), ``resets`` ``(B, window)`` is True
    where a document starts; column 0 of window 0 is always True (every row starts
    from a fresh state). Without it, ``resets`` is None.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"a token stream must be 1-D, got shape {tokens.shape}")
    batch = _positive(batch, "batch size")
    window = _positive(window, "window")
    per_stream = (len(tokens) - 1) // batch if len(tokens) else 0
    if per_stream < 1:
        raise DataError(f"a stream of {len(tokens)} tokens is too short for {batch} parallel "
                        f"streams (each needs at least 2 tokens)",
                        hint="use a smaller batch size or more text")
    if doc_starts is not None:
        doc_starts = np.asarray(doc_starts, dtype=bool)
        if doc_starts.shape != tokens.shape:
            raise DataError(f"doc_starts has shape {doc_starts.shape}, but the stream has "
                            f"shape {tokens.shape}")
    total = num_stream_windows(len(tokens), batch, window)
    if isinstance(start, bool) or not isinstance(start, int | np.integer) \
            or not 0 <= start <= total:
        raise DataError(f"start window must be between 0 and {total}, got {start!r}")

    rows_x, rows_y, rows_r = _rows(tokens, batch, per_stream, doc_starts)
    return _windows(rows_x, rows_y, rows_r, window, int(start), total)


def reaching_stream_windows(tokens: np.ndarray, batch: int, window: int, reach: int,
                            doc_starts: np.ndarray | None = None,
                            start: int = 0) -> Iterator[Batch]:
    """The windows of :func:`stream_windows`, each led by the steps before it, up to
    ``reach`` steps in all: truncated BPTT(k2; k1) of a stream (``window`` = k1 new
    steps per update, ``reach`` = ceil(k2 / k1) k1, a multiple of ``window``).

    Window ``i`` covers the steps ``a .. (i + 1) window - 1`` of every row, ``a = max(0,
    (i + 1) window - reach)``, the last ``window`` of them those of
    :func:`stream_windows`'s window ``i`` (padded alike at the stream's end: ``lengths``
    counts every step before them). Every window is ``reach`` steps long, so a jitted
    ``train_step`` compiles once: near the stream's start, where fewer steps exist,
    ``pad = reach - window - (i window - a)`` steps of token 0 lead the window, a
    multiple of ``window`` (the module's truncation windows keep their place), and the
    state is reset before the stream's first step, its step ``pad``, which is the state
    the stream starts from (zero) and cuts the padding off from the loss and the
    gradient. The first ``context = pad + i window - a`` steps are context only, their
    ``y`` -1 (not scored). ``resets`` as in :func:`stream_windows` (all False where it
    gives None: every window then has them, one call signature), plus that reset.
    ``advance`` is where the next window starts, counted from this one's first step:
    ``window`` once the windows have the full reach, else 0 (every padded window).
    """
    tokens = np.asarray(tokens)
    batch, window = _positive(batch, "batch size"), _positive(window, "window")
    reach = _positive(reach, "reach")
    if reach % window:
        raise DataError(f"the reach ({reach}) must be a multiple of the window ({window})")
    plain = stream_windows(tokens, batch, window, doc_starts, start)  # checks the rest
    per_stream = (len(tokens) - 1) // batch
    rows_x, rows_y, rows_r = _rows(tokens, batch, per_stream, doc_starts)
    return _reaching(plain, rows_x, rows_r, window, reach, int(start))


def _rows(tokens: np.ndarray, batch: int, per_stream: int, doc_starts: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ``batch`` parallel streams: inputs, targets and resets ``(B, per_stream)``."""
    used = batch * per_stream
    rows_x = tokens[:used].reshape(batch, per_stream).astype(np.int32)
    rows_y = tokens[1: used + 1].reshape(batch, per_stream).astype(np.int32)
    rows_r = None
    if doc_starts is not None:
        rows_r = np.asarray(doc_starts, dtype=bool)[:used].reshape(batch, per_stream).copy()
        rows_r[:, 0] = True
    return rows_x, rows_y, rows_r


def _reaching(plain: Iterator[Batch], rows_x: np.ndarray, rows_r: np.ndarray | None,
              window: int, reach: int, start: int) -> Iterator[Batch]:
    for i, b in enumerate(plain, start):
        lo = i * window
        first = max(0, lo + window - reach)
        pad = reach - window - (lo - first)
        context = pad + lo - first
        n = len(b)
        x = np.concatenate([np.zeros((n, pad), np.int32), rows_x[:, first:lo], b.x], axis=1)
        y = np.concatenate([np.full((n, context), -1, dtype=np.int32), b.y], axis=1)
        resets = np.zeros((n, reach), dtype=bool)
        if rows_r is not None:
            resets[:, pad:context] = rows_r[:, first:lo]
            resets[:, context:] = b.resets
        if pad:
            resets[:, pad] = True  # the stream starts at step pad (from the zero state)
        advance = window if lo + 2 * window - reach > 0 else 0
        yield Batch(x=x, y=y, lengths=b.lengths + context, resets=resets, context=context,
                    advance=advance)  # (pad > 0 only where advance is 0)


def _windows(rows_x: np.ndarray, rows_y: np.ndarray, rows_r: np.ndarray | None, window: int,
             start: int, total: int) -> Iterator[Batch]:
    batch, per_stream = rows_x.shape
    for i in range(start, total):
        lo, hi = i * window, min((i + 1) * window, per_stream)
        valid = hi - lo
        x = np.zeros((batch, window), dtype=np.int32)
        y = np.zeros((batch, window), dtype=np.int32)
        x[:, :valid] = rows_x[:, lo:hi]
        y[:, :valid] = rows_y[:, lo:hi]
        resets = None
        if rows_r is not None:
            resets = np.zeros((batch, window), dtype=bool)
            resets[:, :valid] = rows_r[:, lo:hi]
        yield Batch(x=x, y=y, lengths=np.full(batch, valid, dtype=np.int32), resets=resets)
