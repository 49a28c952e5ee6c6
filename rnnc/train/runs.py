"""Run folders: what ``rnnc train`` writes and ``eval``/``sample``/``plot`` read back.

A run folder holds::

    run.json             what the run is: spec (path, hash, text file), backend,
                         dataset and its options, overrides from the command line
    spec.rnn|spec.yaml   a copy of the spec as it was trained
    model_<backend>.py   the generated module the run trains (imported from here)
    metrics.jsonl        one JSON record per training step, per validation pass
                         and for the final test pass
    checkpoints/         see :mod:`rnnc.train.checkpoint`
    .rnnc-lock           locked (flock) while an `rnnc train` trains into the folder
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from rnnc.errors import BackendError, RnncError, TrainError
from rnnc.ir.lower import Sizes
from rnnc.spec import ast as A
from rnnc.train.hostmem import keep_freed_memory


RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


def module_path(run_dir: Path, backend: str) -> Path:
    return Path(run_dir) / f"model_{backend}.py"


_imports = itertools.count()


def _is_jax_module(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = [f.readline() for _ in range(3)]
    except OSError:
        return False
    return any("backend: jax" in line for line in head)


def import_module_file(path: Path) -> ModuleType:
    """Import a generated module from its file (a fresh module object each time)."""
    name = f"rnnc_run_{next(_imports)}_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TrainError(f"cannot import the generated module '{path}'")
    module = importlib.util.module_from_spec(spec)
    keep_freed_memory()  # before the module allocates (see rnnc/train/hostmem.py)
    sys.modules[name] = module  # some libraries (dataclasses, pickle) look modules up here
    try:
        if _is_jax_module(path):
            from rnnc.backends.jax.cache import enable_compilation_cache

            enable_compilation_cache()  # before the module's first computation
        spec.loader.exec_module(module)
    except ModuleNotFoundError as err:  # JAX not installed (a JAX run, --backend jax)
        sys.modules.pop(name, None)
        what = err.name or "a module it needs"
        raise BackendError(f"the generated module {Path(path).name} needs {what}, which is "
                           "not installed", hint="install it (JAX: pip install 'rnnc[jax]'), or "
                           "train with --backend numpy") from None
    except FileNotFoundError:
        sys.modules.pop(name, None)
        raise TrainError(f"the run's module '{path}' is missing",
                         hint="train the run again (rnnc train SPEC --out RUN_DIR --force)"
                         ) from None
    except OSError as err:  # a folder in its place, unreadable
        sys.modules.pop(name, None)
        raise TrainError(f"cannot read the run's module '{path}': {err.strerror or err}",
                         hint="train the run again (rnnc train SPEC --out RUN_DIR --force)"
                         ) from None
    except RnncError:
        sys.modules.pop(name, None)
        raise
    return module


def read_run(run_dir: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder; TrainError if there is none."""
    path = Path(run_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        what = "it is a file" if Path(run_dir).is_file() else \
            "it does not exist" if not Path(run_dir).exists() else f"it has no {RUN_RECORD}"
        raise TrainError(f"'{run_dir}' is not a run folder ({what})",
                         hint="give the folder `rnnc train` wrote (default runs/<spec name>)"
                         ) from None
    except (OSError, ValueError) as err:
        why = getattr(err, "strerror", None) or err
        raise TrainError(f"cannot read '{path}': {why}") from None
    missing = record_problem(record, _RUN_KEYS) or _run_field_problem(record)
    if missing:
        raise TrainError(f"'{path}' is damaged: {missing}",
                         hint="train the run again (rnnc train SPEC --out RUN_DIR --force)")
    return record


_RUN_KEYS = {"spec_sha256": str, "spec_copy": str, "backend": str, "module": str,
             "base_dir": str, "data": dict, "sizes": dict, "metric": str}


def _run_field_problem(record: dict[str, Any]) -> str | None:
    """What is wrong inside a run record's fields (what eval, sample, plot and --resume
    read from them), or None."""
    data, sizes = record["data"], record["sizes"]
    if not isinstance(data.get("name"), str):
        return "its 'data' has no dataset name"
    for key, kind in (("n_in", int), ("n_out", int), ("task", str)):
        if not isinstance(sizes.get(key), kind) or isinstance(sizes.get(key), bool):
            return f"its 'sizes' has no {key}"
    overrides = record.get("overrides", {})
    if overrides is not None:
        if not isinstance(overrides, dict):
            return f"its 'overrides' is {json.dumps(overrides)[:40]}"
        for key, value in overrides.items():
            if key not in Overrides.__dataclass_fields__:
                return f"its 'overrides' has an unknown setting '{key}'"[:120]
            number = int | float if key == "lr" else int
            if not isinstance(value, number) or isinstance(value, bool):
                return f"its override of {key} is {json.dumps(value)[:40]}"
    vocab = record.get("vocab")
    if vocab is None and data["name"] == "text":
        return "it has no vocabulary (the text run's characters)"
    if vocab is not None and (not isinstance(vocab, list) or not vocab
                              or not all(isinstance(v, str) for v in vocab)):
        return f"its 'vocab' is {json.dumps(vocab)[:40]}"
    if data["name"] == "text" and not len(vocab) == sizes["n_in"] == sizes["n_out"]:
        return f"its vocabulary has {len(vocab)} characters, its model {sizes['n_in']}"
    return None


def record_problem(record: Any, keys: dict[str, type | tuple[type, ...]]) -> str | None:
    """What is wrong with a JSON record that must be an object with ``keys``, or None."""
    if not isinstance(record, dict):
        kind = "null" if record is None else type(record).__name__
        return f"it holds {kind}, not an object"
    for key, kind in keys.items():
        if key not in record:
            return f"it has no '{key}'"
        if not isinstance(record[key], kind):
            return f"its '{key}' is {json.dumps(record[key])[:40]}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metrics_record(line: str) -> dict[str, Any] | None:
    """The record a line of ``metrics.jsonl`` holds, or None for a line that is none: a
    half-written one, or JSON of another shape (an edited or damaged file), whose fields
    would be a TypeError wherever records are read."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("kind") not in ("train", "val", "test"):
        return None
    step, epoch = rec.get("step"), rec.get("epoch", 0)
    if not (isinstance(step, int) and isinstance(epoch, int)) or isinstance(step, bool) \
            or isinstance(epoch, bool):
        return None
    if rec["kind"] == "train" and not _is_number(rec.get("loss")):
        return None
    if rec["kind"] == "val" and not _is_number(rec.get("val_loss")):
        return None
    numbers = ("loss", "grad_norm", "lr", "tokens_per_s", "time", "train_loss")
    if any(not _is_number(v) for k, v in rec.items()
           if k in numbers or k.startswith(("val_", "test_"))):
        return None
    return rec


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` (a half-written line, or one that holds no
    record, is skipped)."""
    path = Path(run_dir) / METRICS
    try:
        # a line damaged into bytes that are not UTF-8 is skipped, not the whole file
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise TrainError(f"cannot read '{path}': {err.strerror or err}") from None
    return [rec for rec in map(metrics_record, lines) if rec is not None]


# ---------------------------------------------------------------- overrides


@dataclass(frozen=True)
class Overrides:
    """Training settings given on the command line, over the spec's."""

    epochs: int | None = None
    batch: int | None = None
    seed: int | None = None
    lr: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Overrides:
        return cls(**(data or {}))


def _set(node: A.CMap, key: str, value: Any) -> A.CMap:
    items = [(k, v) for k, v in node.items]
    spans = list(node.key_spans) + [None] * (len(items) - len(node.key_spans))
    for i, (k, _) in enumerate(items):
        if k == key:
            items[i] = (k, value)
            return replace(node, items=tuple(items), key_spans=tuple(spans))
    return replace(node, items=tuple(items) + ((key, value),), key_spans=tuple(spans) + (None,))


def apply_overrides(spec: A.Spec, overrides: Overrides) -> A.Spec:
    """The spec with the command line's epochs/batch/seed/lr written into its train block."""
    from rnnc.spec.schema import TRAIN

    train = spec.train
    if train is None:
        return spec
    for key in ("epochs", "batch", "seed"):
        value = getattr(overrides, key)
        if value is not None:
            train = _set(train, key, A.CScalar(int(value)))
    if overrides.lr is not None:
        name, opts = TRAIN.validate(train, "train")["updater"]
        options = A.CMap(tuple((k, A.CScalar(v)) for k, v in (opts or {}).items()
                               if k != "lr") + (("lr", A.CScalar(float(overrides.lr))),))
        train = _set(train, "updater", A.CMap(((name, options),)))
    return replace(spec, train=train)


def sizes_from(record: dict[str, Any]) -> Sizes:
    s = record["sizes"]
    return Sizes(s["n_in"], s["n_out"], s["task"])
