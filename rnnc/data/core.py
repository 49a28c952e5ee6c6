"""Data containers and the option/split helpers every dataset builder shares.

Shape conventions (N examples, T time steps, F features, Y regression outputs,
V vocabulary size / classes):

* ``Split.x``: ``(N, T)`` int32 token ids (``Dataset.input == "tokens"``) or
  ``(N, T, F)`` float64 features (``"features"``).
* ``Split.y``: ``(N, T)`` int32 for ``classify_step``, ``(N,)`` int32 for
  ``classify_last``, ``(N, T, Y)`` float64 for ``regress_step``, ``(N, Y)``
  float64 for ``regress_last``.
* ``Split.lengths``: ``(N,)`` int32, ``1 <= lengths[n] <= T``. Steps at or beyond a
  sequence's length are padding: ``x`` and ``y`` hold zeros there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rnnc.errors import DataError, did_you_mean, shown


TASKS = ("classify_step", "classify_last", "regress_step", "regress_last")
"""The four task kinds a dataset can have."""

SPLIT_NAMES = ("train", "val", "test")


@dataclass(eq=False)
class Split:
    """One part (train, val or test) of a dataset, as padded arrays.

    Attributes:
        x: ``(N, T)`` int32 token ids or ``(N, T, F)`` float64 features.
        y: targets; shape depends on the task (see the module docstring).
        lengths: ``(N,)`` int32 true length of each sequence.
        legal: ``(N, T, V)`` bool, the symbols the grammar allows next (Reber only).
        resets: ``(N, T)`` bool, True where a new document starts inside a window,
            so recurrent state must be reset to zero before that step (text only).
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    legal: np.ndarray | None = None
    resets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def steps(self) -> int:
        """T, the padded sequence length."""
        return int(self.x.shape[1])

    def take(self, index: np.ndarray | slice) -> Split:
        """The examples at ``index`` (an index array or slice), as a new Split."""
        return Split(
            x=self.x[index],
            y=self.y[index],
            lengths=self.lengths[index],
            legal=None if self.legal is None else self.legal[index],
            resets=None if self.resets is None else self.resets[index],
        )


@dataclass(eq=False)
class Dataset:
    """A built dataset: three splits plus what a model and trainer need to know.

    Attributes:
        name: the dataset's registry name (``"reber"``, ``"text"``, ...).
        task: one of :data:`TASKS`.
        input: ``"tokens"`` (x holds ids below ``n_in``) or ``"features"``.
        n_in: vocabulary size (tokens) or feature count F (features).
        n_out: number of classes V, or regression output size Y.
        train, val, test: the splits.
        metric: headline metric name: ``"reber_accuracy"``, ``"accuracy"`` or ``"mse"``.
        vocab: the symbol of each token id, where the tokens are symbols.
        stream: text only: ``{"train"|"val"|"test": (L,) int32}`` token streams.
        doc_starts: text only: ``(L,)`` bool per stream, True where a document starts.
        info: anything else worth recording (split sizes, normalisation stats, ...).
    """

    name: str
    task: str
    input: str
    n_in: int
    n_out: int
    train: Split
    val: Split
    test: Split
    metric: str
    vocab: list[str] | None = None
    stream: dict[str, np.ndarray] | None = None
    doc_starts: dict[str, np.ndarray] | None = None
    info: dict = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, Split]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def split(self, name: str) -> Split:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split '{name}'", hint=did_you_mean(name, SPLIT_NAMES))
        return self.splits[name]

    def fingerprint(self) -> str:
        """sha256 of the splits' arrays and the vocabulary: what a model trained on this
        dataset has seen. Runs record it, so that resuming or evaluating a run on data
        that changed since (an edited file) is noticed."""
        h = hashlib.sha256()
        h.update(json.dumps([self.task, self.input, self.n_in, self.n_out, self.vocab])
                 .encode("utf-8"))
        streams = [self.stream, self.doc_starts]
        arrays = [a for d in streams if d is not None for a in d.values()]
        for split in self.splits.values():
            arrays += [split.x, split.y, split.lengths, split.resets]
        for a in arrays:
            if a is None:
                h.update(b"-")
                continue
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.reshape(-1).view(np.uint8))  # its bytes, not a copy (tobytes)
        return h.hexdigest()

    def summary(self) -> str:
        """A one-line description, e.g. for ``rnnc data show``."""
        sizes = ", ".join(f"{k} {len(s)}" for k, s in self.splits.items())
        return (f"{self.name}: {self.task}, {self.input} in (n_in={self.n_in}), "
                f"n_out={self.n_out}, T={self.train.steps}; {sizes}; metric {self.metric}")


# ---------------------------------------------------------------------------
# Options


MAX_COUNT = 2**31 - 1
"""The largest integer a dataset option takes (a count, a length, a window): larger ones
overflow NumPy's sizes long before any machine could hold the data."""


def _describe(value: Any) -> str:
    return "no value" if value is None else shown(value)


class Options:
    """A dataset's merged options with typed, validating accessors.

    Every accessor raises :class:`DataError` naming the dataset and the option.
    """

    def __init__(self, dataset: str, values: Mapping[str, Any], base_dir: Path,
                 defaults: Mapping[str, Any] | None = None):
        self.dataset = dataset
        self.values = dict(values)
        self.base_dir = base_dir
        self.defaults = dict(defaults or {})

    def error(self, key: str, expected: str, hint: str | None = None) -> DataError:
        """The standard 'option X must be Y' error (the hint defaults to the default)."""
        got = _describe(self.values.get(key))
        if hint is None and self.defaults.get(key) is not None:
            hint = f"the default is {key}: {shown(self.defaults[key])}"
        return DataError(
            f"option '{key}' of dataset '{self.dataset}' must be {expected}, got {got}",
            hint=hint).at_option(key)

    def raw(self, key: str) -> Any:
        return self.values.get(key)

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer option (floats with an integral value are accepted)."""
        value = self.values.get(key)
        bounds = ""
        if minimum is not None and maximum is not None:
            bounds = f" between {minimum} and {maximum}"
        elif minimum is not None:
            bounds = f" >= {minimum}"
        elif maximum is not None:
            bounds = f" <= {maximum}"
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer):
            raise self.error(key, "an integer" + bounds)
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()
                                             and abs(value) <= 2**53):
            raise self.error(key, "an integer" + bounds)  # 1e300 is no count
        value = int(value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(key, "an integer" + bounds)
        if maximum is None and value > MAX_COUNT:  # n: 1e30 was an OverflowError in NumPy
            raise self.error(key, f"an integer{bounds} and at most {MAX_COUNT}")
        return value

    def number(self, key: str, minimum: float | None = None) -> float:
        """A finite real option."""
        value = self.values.get(key)
        bounds = f" >= {minimum}" if minimum is not None else ""
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise self.error(key, "a number" + bounds)
        value = float(value)
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise self.error(key, "a finite number" + bounds)
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str:
        """A string option that must be one of ``choices``."""
        value = self.values.get(key)
        if not isinstance(value, str) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else None
            raise self.error(key, "one of " + ", ".join(repr(c) for c in choices),
                             hint or "expected one of: " + ", ".join(choices))
        return value

    def fractions(self, key: str = "split") -> tuple[float, float, float]:
        """Three non-negative fractions ``[train, val, test]`` summing to 1, train > 0."""
        value = self.values.get(key)
        expected = "a list of 3 fractions [train, val, test] summing to 1"
        hint = "for example split: [0.8, 0.1, 0.1]"
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 3:
            raise self.error(key, expected, hint)
        out = []
        for part in value:
            if isinstance(part, bool) or not isinstance(part, int | float | np.number):
                raise self.error(key, expected, hint)
            part = float(part)
            if not math.isfinite(part) or part < 0:
                raise self.error(key, expected + " (each fraction >= 0)", hint)
            out.append(part)
        if abs(sum(out) - 1.0) > 1e-6:
            raise self.error(key, expected + f" (these sum to {sum(out):g})", hint)
        if out[0] <= 0:
            raise self.error(key, expected + " with a non-empty train part", hint)
        return out[0], out[1], out[2]

    def path(self, key: str = "path") -> Path:
        """A required file path; relative paths resolve against the spec's folder."""
        value = self.values.get(key)
        if value is None:
            raise DataError(f"dataset '{self.dataset}' needs option '{key}'",
                            hint=f"give the file, e.g. {key}: data/train.txt "
                                 "(relative to the spec file's folder)")
        if not isinstance(value, str | Path) or not str(value).strip():
            raise self.error(key, "a file path (a string)")
        if "\0" in str(value):
            raise self.error(key, "a file path without NUL characters")
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # ~user that does not exist, or no home folder
            raise self.error(key, "a file path whose ~ names a home folder",
                             hint="write the path out in full") from None
        if not path.is_absolute():
            path = self.base_dir / path
        return path

    def names(self, key: str, required: bool = False) -> list[str] | None:
        """A list of column names (a single string is accepted as a one-item list)."""
        value = self.values.get(key)
        if value is None:
            if required:
                raise DataError(f"dataset '{self.dataset}' needs option '{key}'",
                                hint=f"list the column names, e.g. {key}: [price]")
            return None
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, Sequence) or not value
                or not all(isinstance(v, str) for v in value)):
            raise self.error(key, "a non-empty list of column names")
        if len(set(value)) != len(value):
            dupes = sorted({v for v in value if list(value).count(v) > 1})
            raise self.error(key, "a list without repeated names",
                             hint="repeated: " + ", ".join(dupes))
        return list(value)


# ---------------------------------------------------------------------------
# Splitting


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """How many of ``n`` items go to train, val and test.

    Cumulative fractions are rounded, so the counts always add up to ``n``.
    """
    first = _round_half_up(n * fractions[0])
    second = _round_half_up(n * (fractions[0] + fractions[1]))
    second = min(max(second, first), n)
    return first, second - first, n - second


def check_split_counts(counts: Sequence[int], fractions: Sequence[float], n: int,
                       dataset: str, what: str = "examples") -> None:
    """Raise :class:`DataError` if a split with a positive fraction got no items."""
    for name, count, frac in zip(SPLIT_NAMES, counts, fractions, strict=True):
        if frac > 0 and count == 0:
            raise DataError(
                f"dataset '{dataset}' has {n} {what}, too few for split "
                f"{[round(f, 6) for f in fractions]}: the {name} part would be empty",
                hint="use more data (option 'n' for generated datasets) or change 'split'")


def split_examples(data: Split, fractions: Sequence[float], rng: np.random.Generator,
                   dataset: str) -> tuple[Split, Split, Split]:
    """Shuffle the examples with ``rng`` and cut them into train/val/test."""
    n = len(data)
    counts = split_counts(n, fractions)
    check_split_counts(counts, fractions, n, dataset)
    order = rng.permutation(n)
    a, b = counts[0], counts[0] + counts[1]
    return data.take(np.sort(order[:a])), data.take(np.sort(order[a:b])), \
        data.take(np.sort(order[b:]))


def split_examples_in_place(data: Split, fractions: Sequence[float],
                            rng: np.random.Generator, dataset: str) -> tuple[Split, Split, Split]:
    """:func:`split_examples`' splits (the same examples, in the same order, from the same
    ``rng``), made by reordering ``data``'s arrays in place: each split is a view of one
    part of them, and no second copy of a large dataset is made. ``data`` is consumed."""
    n = len(data)
    counts = split_counts(n, fractions)
    check_split_counts(counts, fractions, n, dataset)
    order = rng.permutation(n)
    a, b = counts[0], counts[0] + counts[1]
    index = np.concatenate([np.sort(order[:a]), np.sort(order[a:b]), np.sort(order[b:])])
    arrays = [data.x, data.y, data.lengths, data.legal, data.resets]
    for arr in arrays:
        if arr is not None:
            permute_rows(arr, index)
    parts = []
    for part in (slice(0, a), slice(a, b), slice(b, n)):
        x, y, lengths, legal, resets = (None if arr is None else arr[part] for arr in arrays)
        parts.append(Split(x=x, y=y, lengths=lengths, legal=legal, resets=resets))
    return parts[0], parts[1], parts[2]


def permute_rows(a: np.ndarray, index: np.ndarray) -> None:
    """``a[:] = a[index]`` for a permutation ``index`` of its rows, one cycle of the
    permutation at a time through a one-row buffer (no copy of ``a``)."""
    done = index == np.arange(len(index))
    row = np.empty_like(a[:1])
    for start in np.flatnonzero(~done):
        if done[start]:
            continue
        row[0] = a[start]
        j = start
        while True:
            done[j] = True
            k = index[j]
            if k == start:
                a[j] = row[0]
                break
            a[j] = a[k]
            j = k


def make_rngs(seed: int, count: int) -> list[np.random.Generator]:
    """``count`` independent generators derived from ``seed`` (data, split, ...)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


# ---------------------------------------------------------------------------
# Files


def open_file(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading bytes; the errors of :func:`read_file_bytes`."""
    try:
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}",
                        hint="relative paths are resolved against the spec file's folder"
                        ) from None
    except IsADirectoryError:
        raise DataError(f"{what} path is a folder, not a file: {path}",
                        hint="give the path of a file") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} file {path}: {exc.strerror or exc}",
                        hint="check the file's permissions") from None


def read_file_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; :class:`DataError` if it is missing or unreadable."""
    from rnnc.spec import endless_device

    if endless_device(path):  # /dev/zero or /dev/urandom: reading never ends
        raise DataError(f"{what} path is a device, not a file: {path}",
                        hint="give the path of a file")
    with open_file(path, what) as f:
        try:
            return f.read()
        except OSError as exc:  # e.g. a folder on some systems, an I/O error mid-read
            raise DataError(f"cannot read {what} file {path}: {exc.strerror or exc}",
                            hint="check the file's permissions") from None


def decode_utf8(data: bytes, path: Path, what: str) -> str:
    """``data`` decoded as UTF-8 (a leading BOM is dropped); DataError with the byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start: exc.start + 1].hex()
        raise DataError(
            f"{what} file {path} is not valid UTF-8: byte 0x{bad} at byte offset {exc.start} "
            f"(line {line}) cannot be decoded",
            hint="convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def zscore_inputs(dataset: Dataset) -> Dataset:
    """The dataset with its feature inputs standardised (``input dense(normalize: zscore)``).

    Mean and standard deviation are per feature, over the valid steps of the *train*
    split only, and applied to every split; padded steps stay zero. The statistics
    are recorded in ``info["input_normalization"]``. Token inputs are returned as
    they are.
    """
    if dataset.input != "features":
        return dataset
    x = dataset.train.x
    valid = np.arange(x.shape[1])[None, :] < dataset.train.lengths[:, None]
    rows = x[valid]
    mean = rows.mean(axis=0) if len(rows) else np.zeros(x.shape[-1])
    std = rows.std(axis=0) if len(rows) else np.ones(x.shape[-1])
    std = np.where(std > 0, std, 1.0)  # a constant feature is only shifted

    def norm(split: Split) -> Split:
        mask = (np.arange(split.x.shape[1])[None, :] < split.lengths[:, None])[..., None]
        x = np.where(mask, (split.x - mean) / std, 0.0)
        return dataclasses.replace(split, x=x)

    info = dict(dataset.info, input_normalization={"method": "zscore", "mean": mean.tolist(),
                                                   "std": std.tolist()})
    return dataclasses.replace(dataset, train=norm(dataset.train), val=norm(dataset.val),
                               test=norm(dataset.test), info=info)
