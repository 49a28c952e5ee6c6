"""User data from files: ``.npz`` arrays and CSV time series."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np

from rnnc.data.core import (
    SPLIT_NAMES,
    TASKS,
    Dataset,
    Options,
    Split,
    check_split_counts,
    decode_utf8,
    make_rngs,
    open_file,
    read_file_bytes,
    split_counts,
    split_examples_in_place,
)
from rnnc.errors import DataError, did_you_mean, unknown


NPZ_DEFAULTS = {"path": None, "task": None, "split": [0.8, 0.1, 0.1], "n_in": None,
                "n_out": None}
CSV_DEFAULTS = {"path": None, "columns": None, "targets": None, "window": 50, "stride": None,
                "normalize": "zscore", "horizon": 1, "split": [0.8, 0.1, 0.1]}

NORMALIZE = ("zscore", "minmax", "none")

NPZ_LAYOUT = ("an .npz dataset holds x: (N, T) int token ids or (N, T, F) floats, y: targets "
              "for the task, and optionally lengths: (N,) ints in 1..T")
CSV_LAYOUT = ("a CSV dataset has a header row naming the columns, then one row of numbers per "
              "time step")


def _npz_error(message: str, hint: str | None = None) -> DataError:
    return DataError(message, hint=hint or NPZ_LAYOUT)


def _csv_error(message: str, hint: str | None = None) -> DataError:
    return DataError(message, hint=hint or CSV_LAYOUT)

# ---------------------------------------------------------------------------
# npz


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays in an .npz file, by name (no pickled objects), read from the file as
    it goes (never the whole file in memory besides its arrays); float features ``x``
    (N, T, F) come as float64, converted block by block (_read_features)."""
    hint = "save the arrays with np.savez(path, x=..., y=...)"
    with open_file(path, "npz") as f:
        try:
            head = f.read(4)
        except OSError as exc:
            raise DataError(f"cannot read npz file {path}: {exc.strerror or exc}",
                            hint="check the file's permissions") from None
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise DataError(f"{path} is not an .npz archive", hint=hint)
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                return {key: _read_features(npz, key) if key == "x" else npz[key]
                        for key in npz.files}
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise DataError(f"{path} holds object arrays, which rnnc does not load",
                                hint="save plain numeric arrays (not lists of arrays)") from None
            raise DataError(f"{path} is not a readable .npz file: {exc}", hint=hint) from None
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path} is not a readable .npz file: {exc}", hint=hint) from None
        except MemoryError as exc:  # e.g. a damaged header announcing a huge shape
            raise DataError(f"{path} holds an array too large for this machine's memory: "
                            f"{exc}", hint="check the shapes the file was saved with") from None


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
_BLOCK_BYTES = 1 << 24  # what _read_features reads at a time


def _read_features(npz, key: str) -> np.ndarray:
    """``npz[key]``, except a C-ordered (N, T, F) float array: that one as float64 (what
    build_npz makes of it), read into its float64 array block by block. Loading it whole
    and converting held both, besides the file's bytes: ~5x the file's size at peak for
    float32 features, now ~2x (the float64 array itself)."""
    name = key + ".npy"
    if name not in npz.zip.namelist():
        return npz[key]
    with npz.zip.open(name) as fp:
        version = np.lib.format.read_magic(fp)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            return npz[key]
        shape, fortran, dtype = reader(fp)
        if (fortran or len(shape) != 3 or not np.issubdtype(dtype, np.floating)
                or dtype.hasobject):
            return npz[key]
        out = np.empty(shape, dtype=np.float64)
        flat = out.reshape(-1)
        step = max(1, _BLOCK_BYTES // dtype.itemsize)
        for start in range(0, flat.size, step):
            count = min(step, flat.size - start)
            data = fp.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise EOFError(f"'{name}' ends before the {shape} array it announces")
            flat[start:start + count] = np.frombuffer(data, dtype=dtype, count=count)
        return out


def _all_finite(a: np.ndarray) -> bool:
    """np.isfinite(a).all(), a block of rows at a time (no boolean copy of a large a)."""
    rows = max(1, _BLOCK_BYTES // max(1, a[:1].nbytes))
    return all(np.isfinite(a[i:i + rows]).all() for i in range(0, len(a), rows))


def _first_bad(mask: np.ndarray) -> str:
    """Index of the first True entry of ``mask``, as ``[i, j, ...]``."""
    index = np.argwhere(mask)[0]
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _infer_task(y: np.ndarray) -> str:
    integral = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    if integral:
        return {1: "classify_last", 2: "classify_step"}.get(y.ndim, "")
    return {1: "regress_last", 2: "regress_last", 3: "regress_step"}.get(y.ndim, "")


def _as_classes(y: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise _npz_error(f"'y' in {path} must hold integer class ids for a classify task",
                             hint="store y as an int array, or choose a regress task")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise _npz_error(f"'y' in {path} has dtype {y.dtype}, expected integer class ids")
    if y.size and y.min() < 0:
        raise _npz_error(f"'y' in {path} has a negative class id at {_first_bad(y < 0)}",
                         hint="class ids are 0, 1, ..., n_out - 1")
    _check_id_range(y, "y", "class id", path)
    return y.astype(np.int32)


MAX_ID = int(np.iinfo(np.int32).max) - 1
"""The largest token or class id rnnc stores (ids are int32 and their count, id + 1,
must be one too)."""


def _check_id_range(a: np.ndarray, key: str, what: str, path: Path) -> None:
    """DataError if ``a`` holds an id that int32 cannot hold (it would wrap around)."""
    if a.size and a.max() > MAX_ID:
        raise _npz_error(f"'{key}' in {path} has {what} {a.max()} at {_first_bad(a > MAX_ID)}, "
                         f"larger than rnnc supports ({MAX_ID})",
                         hint=f"{what}s are 0, 1, ..., count - 1; renumber them densely")


def _size_option(opts: Options, key: str, inferred: int, at_least: bool) -> int:
    """A given n_in/n_out: a vocabulary or class count may exceed the ids the data
    uses (``at_least``); a feature or output width must match the data exactly."""
    given = opts.integer(key, minimum=1)
    if at_least and given < inferred:
        raise opts.error(key, f"at least {inferred} (the data uses ids up to {inferred - 1})")
    if not at_least and given != inferred:
        raise opts.error(key, f"{inferred} (the width of the data)")
    return given


def build_npz(opts: Options, seed: int) -> Dataset:
    """The ``npz`` dataset: arrays ``x``, ``y`` and optional ``lengths`` from a file.

    ``x`` is ``(N, T)`` integers (tokens; n_in = max id + 1 unless option ``n_in``) or
    ``(N, T, F)`` floats (features). ``y``'s layout follows the task (option ``task``,
    else inferred: int ``(N,)`` classify_last, int ``(N, T)`` classify_step, float
    ``(N,)``/``(N, Y)`` regress_last, float ``(N, T, Y)`` regress_step; a float ``(N, T)``
    y needs ``task: regress_step`` and becomes ``(N, T, 1)``). Steps at or beyond
    ``lengths`` are set to zero. The examples are shuffled into splits by ``seed``.
    """
    path = opts.path()
    task_opt = opts.raw("task")
    if task_opt is not None and task_opt not in TASKS:
        raise unknown("task", str(task_opt), TASKS, cls=DataError)
    fractions = opts.fractions()
    arrays = _load_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise _npz_error(f"{path} has no array '{key}' (it has: "
                             f"{', '.join(sorted(arrays)) or 'nothing'})",
                             hint="save with np.savez(path, x=inputs, y=targets[, lengths=...])")
    x, y = arrays["x"], arrays["y"]

    # x: tokens or features
    if x.ndim == 2 and (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        kind = "tokens"
        if x.size and x.min() < 0:
            raise _npz_error(f"'x' in {path} has a negative token id at {_first_bad(x < 0)}")
        _check_id_range(x, "x", "token id", path)
        x = x.astype(np.int32, copy=False)
    elif x.ndim == 3 and np.issubdtype(x.dtype, np.floating):
        kind = "features"
        if not _all_finite(x):
            raise _npz_error(f"'x' in {path} has NaN or infinite values, e.g. at "
                             f"{_first_bad(~np.isfinite(x))}",
                             hint="fill or drop the missing values before saving")
        x = x.astype(np.float64, copy=False)  # _load_npz made it float64: no copy
    elif x.ndim in (2, 3):
        raise _npz_error(f"'x' in {path} has shape {x.shape} and dtype {x.dtype}",
                         hint="x must be (N, T) integer token ids or (N, T, F) floats")
    else:
        raise _npz_error(f"'x' in {path} has rank {x.ndim} (shape {x.shape}), expected "
                         "(N, T) token ids or (N, T, F) features")
    n, steps = x.shape[:2]
    if n == 0 or steps == 0:
        raise _npz_error(f"'x' in {path} is empty (shape {x.shape})")

    if y.ndim == 0 or y.shape[0] != n:
        raise _npz_error(f"'y' in {path} has {y.shape[0] if y.ndim else 0} examples "
                         f"(shape {y.shape}) but 'x' has {n}",
                         hint="x and y must have the same first dimension N")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) \
            or np.issubdtype(y.dtype, np.complexfloating):
        raise _npz_error(f"'y' in {path} has dtype {y.dtype}, expected real numbers")
    task = task_opt or _infer_task(y)
    if not task:
        raise _npz_error(f"cannot infer the task from 'y' in {path} (shape {y.shape}, "
                         f"dtype {y.dtype})", hint="set option 'task' to one of "
                         + ", ".join(TASKS))
    expected = {"classify_step": "(N, T) int", "classify_last": "(N,) int",
                "regress_step": "(N, T, Y) float", "regress_last": "(N, Y) float"}[task]
    if task.startswith("classify"):
        want_ndim = 2 if task == "classify_step" else 1
        if y.ndim != want_ndim:
            raise _npz_error(f"'y' in {path} has shape {y.shape}; task {task} needs "
                             f"{expected}")
        y = _as_classes(y, path)
    else:
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise _npz_error(f"'y' in {path} has dtype {y.dtype}; task {task} needs {expected}")
        y = y.astype(np.float64, copy=False)
        if task == "regress_step" and y.ndim == 2:
            y = y[..., None]
        if task == "regress_last" and y.ndim == 1:
            y = y[:, None]
        if y.ndim != (3 if task == "regress_step" else 2):
            raise _npz_error(f"'y' in {path} has shape {y.shape}; task {task} needs "
                             f"{expected}")
        if not _all_finite(y):
            raise _npz_error(f"'y' in {path} has NaN or infinite values, e.g. at "
                             f"{_first_bad(~np.isfinite(y))}")
    if task.endswith("_step") and y.shape[1] != steps:
        raise _npz_error(f"'y' in {path} has {y.shape[1]} steps but 'x' has {steps}",
                         hint=f"task {task} needs one target per input step")

    if "lengths" in arrays:
        lengths = arrays["lengths"]
        if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
            raise _npz_error(f"'lengths' in {path} has shape {lengths.shape} and dtype "
                             f"{lengths.dtype}; expected ({n},) integers")
        bad = (lengths < 1) | (lengths > steps)
        if bad.any():
            i = int(np.argmax(bad))
            raise _npz_error(f"'lengths' in {path} is out of range: lengths[{i}] = "
                             f"{int(lengths[i])}, expected 1 to {steps} (T)")
        lengths = lengths.astype(np.int32)
        pad = np.arange(steps)[None, :] >= lengths[:, None]
        # in place: x and y are this function's own arrays (read from the file, or
        # converted from those)
        x[pad] = 0
        if task.endswith("_step"):
            y[pad] = 0
    else:
        lengths = np.full(n, steps, dtype=np.int32)

    n_in = int(x.max()) + 1 if kind == "tokens" else x.shape[2]
    if task.startswith("classify"):
        n_out = int(y.max()) + 1
    else:
        n_out = y.shape[-1]
    if opts.raw("n_in") is not None:
        n_in = _size_option(opts, "n_in", n_in, at_least=kind == "tokens")
    if opts.raw("n_out") is not None:
        n_out = _size_option(opts, "n_out", n_out, at_least=task.startswith("classify"))

    _, split_rng = make_rngs(seed, 2)
    # the splits split_examples makes, as views of x and y reordered in place (no copy)
    del arrays
    train, val, test = split_examples_in_place(Split(x=x, y=y, lengths=lengths), fractions,
                                               split_rng, "npz")
    return Dataset(
        name="npz", task=task, input=kind, n_in=n_in, n_out=n_out, train=train, val=val,
        test=test, metric="accuracy" if task.startswith("classify") else "mse",
        info={"path": str(path), "n": int(n)},
    )


# ---------------------------------------------------------------------------
# csv


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the data rows (with their 1-based line numbers) of a CSV file."""
    text = decode_utf8(read_file_bytes(path, "CSV"), path, "CSV")
    if not text.strip():
        raise _csv_error(f"CSV file {path} is empty",
                         hint="the first row must name the columns, e.g. time,price")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise _csv_error(f"CSV file {path} is malformed at line {reader.line_num}: {exc}") \
            from None
    if header is None:
        raise _csv_error(f"CSV file {path} is empty",
                         hint="the first row must name the columns, e.g. time,price")
    if any(not name for name in header):
        raise _csv_error(f"CSV file {path} has an empty column name in its header row",
                         hint="name every column in the first row")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes and all(_is_number(cell) for cell in header):
        raise _csv_error(f"CSV file {path} repeats column names ({', '.join(dupes)[:60]}): the "
                         "file seems to have no header row (its first row holds numbers)",
                         hint="add a first row naming the columns, e.g. time,price")
    if dupes:
        raise _csv_error(f"CSV file {path} repeats column names: {', '.join(dupes)}")
    if not rows:
        raise _csv_error(f"CSV file {path} has a header but no data rows")
    return header, rows


def _unknown_column(name: str, header: list[str], path: Path) -> None:
    """The DataError for a column the header does not name, saying why where it can:
    a file without a header row, or one separated by something else than commas."""
    seps = [sep for sep in ";\t|" if len(header) == 1 and sep in header[0]]
    if seps:
        raise _csv_error(f"unknown column '{name}' in CSV file {path}: its header is the single "
                         f"column {header[0][:60]!r}, so its fields seem to be separated by "
                         f"{seps[0]!r}, not commas",
                         hint="rnnc reads comma-separated files; convert the separators to "
                              "commas")
    if all(_is_number(cell) for cell in header):
        raise _csv_error(f"unknown column '{name}' in CSV file {path}: the file seems to have "
                         f"no header row (its first row holds numbers: "
                         f"{', '.join(header)[:60]})",
                         hint="add a first row naming the columns, e.g. time,price")
    raise _csv_error(f"unknown column '{name}' in CSV file {path}",
                     hint=did_you_mean(name, header) or "the header has: " + ", ".join(header))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _parse_columns(path: Path, header: list[str], rows: list[tuple[int, list[str]]],
                   names: list[str]) -> np.ndarray:
    """``(R, len(names))`` float64 values of the named columns."""
    index = [header.index(name) for name in names]
    out = np.empty((len(rows), len(names)))
    for r, (line, row) in enumerate(rows):
        if len(row) != len(header):
            raise _csv_error(f"row {r + 1} (line {line}) of {path} has {len(row)} fields, "
                             f"but the header has {len(header)}")
        for c, i in enumerate(index):
            cell = row[i].strip()
            try:
                value = float(cell)
            except ValueError:
                what = "an empty cell" if not cell else f"non-numeric value {cell!r}"
                raise _csv_error(f"{what} in row {r + 1} (line {line}), column "
                                 f"'{names[c]}' of {path}",
                                 hint="every used column must hold numbers; choose the input "
                                      "columns with option 'columns'") from None
            if not np.isfinite(value):
                raise _csv_error(f"non-finite value {cell!r} in row {r + 1} (line {line}), "
                                 f"column '{names[c]}' of {path}",
                                 hint="fill or drop missing values before training")
            out[r, c] = value
    return out


def _normalization(method: str, train_values: np.ndarray, names: list[str]):
    """Per-column (shift, scale) from the train rows, and their record for info."""
    if method == "zscore":
        shift, scale = train_values.mean(0), train_values.std(0)
        keys = ("mean", "std")
    elif method == "minmax":
        shift, scale = train_values.min(0), train_values.max(0) - train_values.min(0)
        keys = ("min", "range")
    else:
        shift, scale = np.zeros(len(names)), np.ones(len(names))
        keys = ("shift", "scale")
    scale = np.where(scale > 0, scale, 1.0)  # constant columns are only shifted
    stats = {name: {keys[0]: float(a), keys[1]: float(b)}
             for name, a, b in zip(names, shift, scale, strict=True)}
    return shift, scale, stats


def _windows(inputs: np.ndarray, targets: np.ndarray, window: int, stride: int,
             horizon: int) -> Split:
    """``x`` ``(W, window, F)`` rows ``s..s+window``, ``y`` ``(W, window, Y)`` the targets
    ``horizon`` rows later, for ``s = 0, stride, ...`` while the window fits."""
    starts = np.arange(0, len(inputs) - window - horizon + 1, stride)
    steps = starts[:, None] + np.arange(window)[None, :]
    return Split(x=inputs[steps], y=targets[steps + horizon],
                 lengths=np.full(len(starts), window, dtype=np.int32))


def build_csv(opts: Options, seed: int) -> Dataset:
    """The ``csv`` dataset: windows of a numeric time series, regress_step.

    The rows are cut into contiguous train/val/test parts (in file order, so the
    model is tested on later data), each part is normalised with statistics from the
    train part, then cut into windows: ``x`` ``(W, window, F)`` = the input columns at
    rows ``s .. s+window-1``, ``y`` ``(W, window, Y)`` = the target columns ``horizon``
    rows later. ``seed`` is unused.
    """
    del seed
    path = opts.path()
    targets = opts.names("targets", required=True)
    columns = opts.names("columns")
    window = opts.integer("window", minimum=1)
    stride = window if opts.raw("stride") is None else opts.integer("stride", minimum=1)
    horizon = opts.integer("horizon", minimum=0)
    method = opts.choice("normalize", NORMALIZE)
    fractions = opts.fractions()

    header, rows = _read_csv(path)
    for name in (columns or []) + targets:
        if name not in header:
            _unknown_column(name, header, path)
    if columns is None:
        columns = [h for h in header if h not in targets]
        if not columns:
            raise _csv_error(f"CSV file {path} has no columns left for inputs once the "
                             f"targets ({', '.join(targets)}) are taken out",
                             hint="set option 'columns' (targets may also be inputs)")
    used = list(dict.fromkeys(columns + targets))
    values = _parse_columns(path, header, rows, used)

    need = window + horizon
    if len(rows) < need:
        plural = "s" if len(rows) != 1 else ""
        raise _csv_error(f"CSV file {path} has {len(rows)} data row{plural}, fewer than one "
                         f"window needs ({window} steps + horizon {horizon} = {need} rows)",
                         hint="use a smaller 'window' or a longer series")
    counts = split_counts(len(rows), fractions)
    check_split_counts(counts, fractions, len(rows), "csv", "rows")
    for name, count, frac in zip(SPLIT_NAMES, counts, fractions, strict=True):
        if frac > 0 and count < need:
            raise _csv_error(f"the {name} part of CSV file {path} has {count} rows, fewer than "
                             f"one window needs ({need} rows)",
                             hint=f"the file has {len(rows)} rows; use a smaller 'window', a "
                                  f"larger {name} fraction in 'split', or a longer series")
    bounds = np.cumsum((0,) + counts)
    shift, scale, stats = _normalization(method, values[: bounds[1]], used)
    values = (values - shift) / scale
    col_idx = [used.index(c) for c in columns]
    tgt_idx = [used.index(c) for c in targets]
    splits = {}
    for i, name in enumerate(SPLIT_NAMES):
        part = values[bounds[i]: bounds[i + 1]]
        splits[name] = _windows(part[:, col_idx], part[:, tgt_idx], window, stride, horizon)

    return Dataset(
        name="csv", task="regress_step", input="features", n_in=len(columns),
        n_out=len(targets), train=splits["train"], val=splits["val"], test=splits["test"],
        metric="mse",
        info={"path": str(path), "columns": columns, "targets": targets, "rows": len(rows),
              "split_rows": dict(zip(SPLIT_NAMES, map(int, counts), strict=True)),
              "window": window, "stride": stride, "horizon": horizon,
              "normalize": {"method": method, "stats": stats}},
    )
