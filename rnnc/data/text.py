"""Character-level text corpora from a UTF-8 file.

The whole file becomes one token stream (one token per Unicode code point), cut
into contiguous train/val/test parts by the ``split`` fractions. Each part is
available both as a stream (``Dataset.stream``, for stateful batching with
:func:`rnnc.data.stream_windows`) and as non-overlapping windows (the Split
arrays, for ordinary shuffled batching).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rnnc.data.core import (
    SPLIT_NAMES,
    Dataset,
    Options,
    Split,
    decode_utf8,
    read_file_bytes,
    split_counts,
)
from rnnc.errors import DataError


TEXT_DEFAULTS = {"path": None, "split": [0.9, 0.05, 0.05], "vocab": "auto", "window": 100,
                 "doc_separator": None}


def _code_points(text: str) -> np.ndarray:
    """``(L,)`` uint32 Unicode code points of ``text``."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _char_name(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


def build_vocab(text: str, vocab: object, path: Path) -> list[str]:
    """The vocabulary: ``"auto"`` = the sorted characters of ``text``, or a given list."""
    if vocab == "auto":
        return sorted(set(text))
    if (isinstance(vocab, str) or not isinstance(vocab, Sequence)
            or not all(isinstance(c, str) and len(c) == 1 for c in vocab) or not vocab):
        raise DataError(f"option 'vocab' of dataset 'text' must be \"auto\" or a list of "
                        f"single characters, got {vocab!r}"[:200],
                        hint="use vocab: auto to take every character in the file")
    if len(set(vocab)) != len(vocab):
        dupes = sorted({c for c in vocab if list(vocab).count(c) > 1})
        raise DataError("option 'vocab' of dataset 'text' repeats characters: "
                        + ", ".join(_char_name(c) for c in dupes))
    return list(vocab)


def encode_text(text: str, vocab: Sequence[str], path: Path | None = None) -> np.ndarray:
    """``(L,)`` int32 token ids of ``text`` (id = index in ``vocab``).

    Raises DataError naming the first character that is not in the vocabulary.
    """
    points = _code_points(text)
    vocab_points = _code_points("".join(vocab))
    order = np.argsort(vocab_points, kind="stable")
    sorted_points = vocab_points[order]
    pos = np.clip(np.searchsorted(sorted_points, points), 0, max(len(sorted_points) - 1, 0))
    ok = sorted_points[pos] == points if len(sorted_points) else np.zeros(len(points), bool)
    if not ok.all():
        offset = int(np.argmin(ok))
        line = text.count("\n", 0, offset) + 1
        where = f" of {path}" if path is not None else ""
        raise DataError(f"character {_char_name(text[offset])} at character offset {offset} "
                        f"(line {line}){where} is not in the vocab",
                        hint="add it to the 'vocab' list, or use vocab: auto")
    return order[pos].astype(np.int32)


def decode_text(tokens: np.ndarray, vocab: Sequence[str]) -> str:
    """The inverse of :func:`encode_text`."""
    return "".join(vocab[int(t)] for t in np.asarray(tokens).ravel())


def find_doc_starts(text: str, separator: str | None) -> np.ndarray:
    """``(L,)`` bool: True at position 0 and right after each ``separator`` occurrence.

    The separator's own characters stay at the end of the document they close.
    """
    starts = np.zeros(len(text), dtype=bool)
    if len(text):
        starts[0] = True
    if separator:
        ends = [m.end() for m in re.finditer(re.escape(separator), text)]
        ends = [e for e in ends if e < len(text)]
        starts[ends] = True
    return starts


def stream_to_windows(tokens: np.ndarray, window: int,
                      doc_starts: np.ndarray | None = None) -> Split:
    """Non-overlapping windows of a token stream for next-token prediction.

    Returns ``x`` ``(W, window)`` = ``tokens[i*window : (i+1)*window]``, ``y`` = the same
    shifted by one token, ``lengths`` all ``window`` and, given ``doc_starts``, ``resets``
    ``(W, window)`` = ``doc_starts`` at each x position. ``W = (L - 1) // window``; the
    tail that does not fill a window is left out.
    """
    count = max(len(tokens) - 1, 0) // window
    used = count * window
    x = tokens[:used].reshape(count, window).astype(np.int32)
    y = tokens[1: used + 1].reshape(count, window).astype(np.int32)
    resets = None
    if doc_starts is not None:
        resets = doc_starts[:used].reshape(count, window).copy()
    return Split(x=x, y=y, lengths=np.full(count, window, dtype=np.int32), resets=resets)


def chars_needed(fractions: Sequence[float], per_part: int) -> tuple[int, bool]:
    """The smallest corpus size whose every non-empty split part has ``per_part`` chars,
    and whether it is exact: for huge sizes, where float rounding makes the search
    creep (a window of 1e300 hung it), the estimate ``per_part / smallest fraction``."""
    smallest = min(f for f in fractions if f > 0)
    n = math.ceil(per_part / smallest)
    estimate = n
    for _ in range(10_000):
        if not any(f > 0 and c < per_part
                   for f, c in zip(fractions, split_counts(n, fractions), strict=True)):
            return n, True
        n += 1
    return estimate, False


def build_text(opts: Options, seed: int) -> Dataset:
    """The ``text`` dataset (``seed`` is unused: the split is contiguous)."""
    del seed
    path = opts.path()
    window = opts.integer("window", minimum=1)
    fractions = opts.fractions()
    separator = opts.raw("doc_separator")
    if separator is not None and (not isinstance(separator, str) or not separator):
        raise opts.error("doc_separator", "a non-empty string or null", hint='e.g. "\\n\\n"')
    text = decode_utf8(read_file_bytes(path, "text"), path, "text")
    if not text:
        raise DataError(f"text file {path} is empty",
                        hint="a character-level corpus needs some text")
    vocab = build_vocab(text, opts.raw("vocab"), path)
    tokens = encode_text(text, vocab, path)
    starts = find_doc_starts(text, separator)

    counts = split_counts(len(tokens), fractions)
    for name, count, frac in zip(SPLIT_NAMES, counts, fractions, strict=True):
        if frac > 0 and count < window + 1:
            needed, exact = chars_needed(fractions, window + 1)
            needed = needed if exact else f"about {needed:.3g}"
            raise DataError(
                f"corpus too short: the {name} part of {path.name} has {count} characters, "
                f"but a window of {window} needs at least {window + 1}",
                hint=f"the file has {len(tokens)} characters; with split {list(fractions)} "
                     f"it needs at least {needed}, or use a smaller 'window'")
    bounds = np.cumsum((0,) + counts)
    stream, doc_starts, splits = {}, {}, {}
    for i, name in enumerate(SPLIT_NAMES):
        part = tokens[bounds[i]: bounds[i + 1]].copy()
        part_starts = starts[bounds[i]: bounds[i + 1]].copy()
        if len(part_starts):
            part_starts[0] = True  # every stream starts from a fresh state
        stream[name], doc_starts[name] = part, part_starts
        splits[name] = stream_to_windows(part, window, part_starts)

    return Dataset(
        name="text", task="classify_step", input="tokens", n_in=len(vocab), n_out=len(vocab),
        train=splits["train"], val=splits["val"], test=splits["test"], metric="accuracy",
        vocab=vocab, stream=stream, doc_starts=doc_starts,
        info={"path": str(path), "n_chars": int(len(tokens)), "window": window,
              "split_chars": dict(zip(SPLIT_NAMES, map(int, counts), strict=True)),
              "n_docs": int(starts.sum()), "doc_separator": separator},
    )
