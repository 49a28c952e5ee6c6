"""Checkpoints: a folder of safetensors files and a JSON record, written atomically.

Layout of a run folder's ``checkpoints/``::

    checkpoints/
      step-00000120/            one checkpoint
        params.safetensors      the parameters
        opt_state.safetensors   the updater's state ("step", "m/<name>", "v/<name>")
        stream.safetensors      text runs: the recurrent state carried across windows
        checkpoint.json         spec hash, step, epoch, data position, RNG state,
                                metrics, vocabulary, backend (written last)
      latest                    the name of the newest checkpoint folder
      best                      the name of the best one (by the validation metric)

A checkpoint folder is written under a temporary name and renamed into place
when complete, and the ``latest``/``best`` pointers are each replaced
atomically (temporary file + rename) after that, so an interrupted save never
leaves a half-written checkpoint behind: the pointers name the previous one
until the new one is whole. Folders no pointer names are then removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from rnnc.errors import TrainError


POINTERS = ("latest", "best")
_NUM = (int, float)
_RECORD_KEYS: dict[str, Any] = {
    "spec_sha256": str, "step": int, "epoch": int, "batch_index": int,
    "rng": (dict, type(None)), "epoch_loss": _NUM, "epoch_tokens": int,
    "best": (*_NUM, type(None)), "best_epoch": (int, type(None)), "bad_epochs": int,
    "finished": (str, type(None)), "elapsed": _NUM}
"""What a checkpoint record must hold (what a resumed run reads back)."""
RECORD = "checkpoint.json"
FORMAT = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    params: dict[str, np.ndarray]
    opt_state: dict[str, np.ndarray]
    stream_state: dict[str, np.ndarray] | None
    record: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.record["step"])


def _numpy(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    # np.array (a copy, C-contiguous) also turns JAX arrays into host arrays
    return {k: np.array(v) for k, v in arrays.items()}


def _write_pointer(folder: Path, name: str, target: str) -> None:
    from rnnc.cli import write_atomic

    write_atomic(folder / name, target + "\n")


def read_pointer(folder: Path, name: str) -> str | None:
    """The checkpoint folder a pointer names, or None."""
    try:
        target = (folder / name).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return target if target and (folder / target / RECORD).is_file() else None


def save_checkpoint(folder: Path, params: dict[str, Any], opt_state: dict[str, Any],
                    stream_state: dict[str, Any] | None, record: dict[str, Any],
                    best: bool = False) -> Path:
    """Write a checkpoint into ``folder`` (``RUN_DIR/checkpoints``) and point ``latest``
    (and ``best`` when ``best``) at it; returns its path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-"))
    except OSError as err:
        raise TrainError(f"cannot write checkpoints to '{folder}': {err.strerror}",
                         hint="check that the run folder is writable") from None
    try:
        # mkdtemp makes a folder only its owner can read, safetensors files only its owner
        # can read: give both what the umask gives new folders and files, like the rest
        # of the run folder
        from rnnc.cli import umask

        mask = umask()
        with contextlib.suppress(OSError):
            tmp.chmod(0o777 & ~mask)
        arrays = {"params": params, "opt_state": opt_state, "stream": stream_state}
        for what, values in arrays.items():
            if values is not None:
                save_file(_numpy(values), str(tmp / f"{what}.safetensors"))
                with contextlib.suppress(OSError):
                    (tmp / f"{what}.safetensors").chmod(0o666 & ~mask)
        record = dict(record, format=FORMAT)
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n",
                                  encoding="utf-8")
        base = f"step-{int(record['step']):08d}"
        name, n = base, 1
        while (folder / name).exists():
            name, n = f"{base}.{n}", n + 1
        os.rename(tmp, folder / name)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError | SafetensorError):
            # safetensors reports a failed write (a full disk) as a SafetensorError:
            # "Error while serializing: I/O error: No space left on device (os error 28)"
            why = getattr(err, "strerror", None) or str(err).split("I/O error: ")[-1]
            raise TrainError(f"cannot write a checkpoint to '{folder}': {why}",
                             hint="check the free disk space and the folder's permissions"
                             ) from None
        raise
    _write_pointer(folder, "latest", name)
    if best:
        _write_pointer(folder, "best", name)
    _prune(folder)
    return folder / name


def _prune(folder: Path) -> None:
    """Remove checkpoint folders (and stale temporary ones) that no pointer names."""
    keep = {read_pointer(folder, p) for p in POINTERS}
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name not in keep and (
                entry.name.startswith("step-") or entry.name.startswith(".tmp-")):
            shutil.rmtree(entry, ignore_errors=True)


def has_checkpoint(folder: Path) -> bool:
    return read_pointer(Path(folder), "latest") is not None


def _step_of(name: str) -> tuple[int, int]:
    """``step-00000120`` -> (120, 0), ``step-00000120.1`` -> (120, 1); (-1, 0) otherwise."""
    base, _, again = name[len("step-"):].partition(".")
    try:
        return int(base), int(again or 0)
    except ValueError:
        return -1, 0


def checkpoint_names(folder: Path) -> list[str]:
    """Every checkpoint folder (one with its record) in ``folder``, newest first, the one
    ``latest`` names before all others."""
    folder = Path(folder)
    try:
        names = [e.name for e in folder.iterdir() if e.name.startswith("step-")
                 and (e / RECORD).is_file()]
    except OSError:
        return []
    names.sort(key=_step_of, reverse=True)
    latest = read_pointer(folder, "latest")
    if latest in names:
        names.remove(latest)
        names.insert(0, latest)
    return names


def holds_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` holds any checkpoint, even one no pointer names any more."""
    return bool(checkpoint_names(folder))


def load_newest(folder: Path) -> tuple[Checkpoint, list[str]]:
    """The checkpoint ``latest`` names or, where it is missing or damaged, the newest whole
    one (for ``--resume``), and a line for every one passed over; TrainError if none
    loads."""
    folder = Path(folder)
    skipped: list[str] = []
    latest = read_pointer(folder, "latest")
    first_error: TrainError | None = None
    for name in checkpoint_names(folder):
        try:
            cp = load_checkpoint_at(folder / name)
        except TrainError as err:
            first_error = first_error or err
            skipped.append(err.message)
            continue
        if latest is None and not skipped:
            skipped.append("the 'latest' pointer names no checkpoint")
        return cp, skipped
    if first_error is not None:
        raise first_error
    raise TrainError(f"no checkpoint in '{folder.parent}'" + (
        "" if latest is None else f" ('latest' names {latest})"),
        hint="train first: rnnc train SPEC --out RUN_DIR")


def load_checkpoint(folder: Path, which: str = "latest") -> Checkpoint:
    """Load the checkpoint a pointer (``latest`` or ``best``) names.

    ``best`` falls back to ``latest`` when no best checkpoint was recorded, and ``latest``
    to the newest whole checkpoint (the one ``--resume`` goes on from) where its pointer
    is gone or names no checkpoint.
    """
    folder = Path(folder)
    name = read_pointer(folder, which)
    if name is None and which == "best":
        name = read_pointer(folder, "latest")
    if name is None:
        return load_newest(folder)[0]  # TrainError "no checkpoint" where there is none
    return load_checkpoint_at(folder / name)


def load_checkpoint_at(path: Path) -> Checkpoint:
    """Load the checkpoint folder ``path``; TrainError if it is damaged."""
    try:
        record = json.loads((path / RECORD).read_text(encoding="utf-8"))
        params = load_file(str(path / "params.safetensors"))
        opt_state = load_file(str(path / "opt_state.safetensors"))
        stream = path / "stream.safetensors"
        stream_state = load_file(str(stream)) if stream.exists() else None
    except (OSError, ValueError, SafetensorError) as err:
        raise TrainError(f"checkpoint '{path}' is damaged: {err}",
                         hint="delete it, or train again with --force") from None
    from rnnc.train.runs import record_problem

    wrong = record_problem(record, _RECORD_KEYS) or _value_problem(record)
    if wrong:
        raise TrainError(f"checkpoint '{path}' is damaged: its {RECORD} is not a checkpoint "
                         f"record ({wrong})", hint="delete it, or train again with --force")
    return Checkpoint(path, params, opt_state, stream_state, record)


FINISHED = (None, "epochs", "early_stop")
"""Why a run ended (``finished`` in a record): not yet, all its epochs, early stopping."""


def _value_problem(record: dict[str, Any]) -> str | None:
    """What is impossible in a checkpoint record whose fields have the right JSON types
    (a count below zero, a loss that is not finite, a dropout RNG state without its
    parts), or None: a resumed run would stop on it with a traceback, or go on from
    nonsense."""
    import math

    for key in ("step", "epoch", "batch_index", "epoch_tokens", "bad_epochs", "best_epoch"):
        if record[key] is not None and record[key] < 0:
            return f"its {key} is {record[key]}"
    for key in ("epoch_loss", "elapsed", "best"):
        if record[key] is not None and not math.isfinite(record[key]):
            return f"its {key} is {record[key]}"
    if record["finished"] not in FINISHED:
        return f"its 'finished' is {json.dumps(record['finished'])[:40]}"
    rng = record["rng"]
    if rng is not None:
        try:
            if rng.get("kind") == "numpy":
                rng_from_json(rng)
            elif rng.get("kind") != "jax" or not isinstance(rng.get("dtype"), str) or \
                    not all(isinstance(k, int) for k in rng.get("key", None) or [None]):
                raise ValueError(rng)
        except (KeyError, TypeError, ValueError, AttributeError):
            return f"its dropout RNG state is {json.dumps(rng)[:60]}"
    return None


# ----------------------------------------------------------------- RNG state


def rng_to_json(rng: Any) -> dict[str, Any]:
    """A dropout RNG as JSON: a NumPy Generator's bit-generator state, or a JAX key."""
    if isinstance(rng, np.random.Generator):
        return {"kind": "numpy", "state": rng.bit_generator.state}
    key = np.asarray(rng)
    return {"kind": "jax", "key": key.tolist(), "dtype": str(key.dtype)}


def rng_from_json(data: dict[str, Any]) -> Any:
    """The inverse of :func:`rng_to_json`."""
    if data["kind"] == "numpy":
        state = data["state"]
        bitgen = getattr(np.random, state["bit_generator"])()
        bitgen.state = state
        return np.random.Generator(bitgen)
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(data["key"], dtype=data["dtype"]))
