"""The training driver behind ``rnnc train``.

It drives a generated module only through its public contract
(``docs/generated-module.md``): ``init_params``, ``init_opt_state``,
``train_step`` (loss, gradients, regularisation, clipping and the update all
happen inside the module), ``forward`` for evaluation and ``step`` for
sampling. The driver owns everything around that:

* **Data.** Sequence datasets: shuffled mini-batches (:func:`iterate_batches`,
  the order drawn from ``(seed, epoch)``), each from a zero state, with their
  ``lengths``. Text: ``batch`` parallel streams cut into windows of ``k1``
  characters (the dataset's ``window`` without ``bptt``) by
  :func:`stream_windows`; the state is carried from one window to the next and,
  with ``reset: document``, reset where a document starts. With ``bptt k1 K1 k2 K2``,
  K2 > K1, each call also takes the steps before its K1 new characters that the
  gradient reaches (their targets -1, not scored; :func:`reach_length`), and the state
  carried is the one entering the next call (:meth:`Trainer.advance`).
* **Evaluation** on the validation split after every epoch (loss and the
  dataset's metrics), early stopping, the test split once at the end with the
  best parameters (it is never trained on).
* **Checkpoints** (:mod:`rnnc.train.checkpoint`) with everything a resumed run
  needs to continue exactly as an uninterrupted one: parameters, updater state,
  dropout RNG, data position, carried stream state, early-stopping state.
* **Logs**: ``metrics.jsonl`` and a progress display (:mod:`rnnc.train.progress`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rnnc import __version__
from rnnc.data import Batch, Dataset, build_dataset, evaluate_outputs, iterate_batches
from rnnc.data import stream_windows as _stream_windows
from rnnc.data.core import zscore_inputs
from rnnc.data.metrics import scored_mask
from rnnc.errors import (
    BackendError,
    RnncError,
    Terminated,
    TrainError,
    did_you_mean,
    raise_terminated,
)
from rnnc.ir.lower import Sizes, data_error_span, spec_hash, validate
from rnnc.ir.nodes import Program
from rnnc.spec import ast as A
from rnnc.spec import load_spec
from rnnc.train import checkpoint as ckpt
from rnnc.train.runs import (
    CHECKPOINTS,
    METRICS,
    RUN_RECORD,
    Overrides,
    apply_overrides,
    import_module_file,
    metrics_record,
    module_path,
    read_run,
)


EVAL_BATCH = 256
"""Rows per ``forward`` call when evaluating a sequence dataset."""

METRIC_KEYS = {
    "reber_accuracy": ("reber_accuracy", "reber_string_accuracy", "accuracy", "cross_entropy"),
    "accuracy": ("accuracy", "cross_entropy"),
    "mse": ("mse", "rmse"),
}
"""The keys :func:`rnnc.data.evaluate_outputs` returns for each dataset metric."""

_LOWER_IS_BETTER = ("loss", "cross_entropy", "mse", "rmse")


# ------------------------------------------------------------------ backends


def default_backend() -> str:
    """``jax`` where JAX and the JAX backend import, else ``numpy``."""
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        return "numpy"
    try:
        load_backend("jax")
    except RnncError:
        return "numpy"
    return "jax"


def load_backend(name: str):
    from rnnc.backends import get_backend

    try:
        return get_backend(name)
    except RnncError:
        raise
    except (ImportError, AttributeError) as err:
        raise BackendError(f"the {name} backend is not available: {err}",
                           hint="install what it needs (pip install 'rnnc[jax]') or use "
                                "--backend numpy") from None


def enable_precision(backend: str, dtype: str) -> None:
    """Make a float64 spec compute in float64 with JAX, which otherwise truncates every
    float64 array to float32 (a warning, then float32 training): switch on x64 before
    the module is imported and its arrays are made."""
    if backend == "jax" and dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------- the model


@dataclass
class Compiled:
    """A spec compiled for training: the dataset, the program and its module."""

    spec: A.Spec
    program: Program
    dataset: Dataset
    module: Any
    backend: str
    train_cfg: dict[str, Any]


def build_data(spec: A.Spec, train_cfg: dict[str, Any], base_dir: Path) -> Dataset:
    name, opts = train_cfg["data"]
    try:
        dataset = build_dataset(name, opts, train_cfg["seed"], base_dir=base_dir)
    except RnncError as err:
        raise err.with_span(data_error_span(spec, err)) from None
    model_cfg, _ = validate(spec)
    kind, enc = model_cfg["input"]
    if kind == "dense" and enc.get("normalize") == "zscore":
        dataset = zscore_inputs(dataset)  # statistics from the train split only
    return dataset


def compile_for_training(spec: A.Spec, base_dir: Path, backend: str,
                         module_file: Path) -> Compiled:
    """Build the dataset, lower the spec with the sizes it implies, emit and import."""
    from rnnc.compiler import build

    if spec.train is None:
        from rnnc.errors import Span, SpecError, in_syntax

        span = Span(spec.source, 1, 1) if spec.source else None
        raise SpecError("the spec has no train block", span,
                        in_syntax(span, "add `train { data ...; epochs N }` to say how "
                                  "to train it", "add a `train:` block with `data:` and "
                                  "`epochs:` to say how to train it"))
    _, train_cfg = validate(spec)
    dataset = build_data(spec, train_cfg, base_dir)
    sizes = Sizes(dataset.n_in, dataset.n_out, dataset.task, dataset.input)
    program = build(spec, sizes, base_dir=base_dir)
    check_text_bptt(spec, program, dataset)
    source = load_backend(backend).emit(program)
    from rnnc.cli import write_atomic

    write_atomic(module_file, source)
    enable_precision(backend, program.train.dtype)
    module = import_module_file(module_file)
    return Compiled(spec, program, dataset, module, backend, train_cfg)


def check_text_bptt(spec: A.Spec, program: Program, dataset: Dataset) -> None:
    """Text with k2 > k1 is trained on windows that reach back k2 steps
    (:func:`reach_length`), which a layer that runs backward in time would read from its
    end, seeing the characters it is to predict: refused."""
    if reach_length(program, dataset) is None:
        return
    backward = [la.name for la in program.model.layers if "bwd" in la.directions]
    if backward:
        from rnnc.errors import SpecError

        k1, k2 = program.train.k1, program.train.k2
        raise SpecError(
            f"bptt k2 ({k2}) larger than k1 ({k1}) on text needs layers that run forward in "
            f"time, and {backward[0]} runs backward in time", spec.train.key_span("bptt"),
            f"write bptt k1 {k1} (k2 = k1), or make every layer run forward")


def uses_dropout(program: Program) -> bool:
    m = program.model
    return bool(m.input_dropout or m.output_dropout or any(layer.dropout for layer in m.layers))


def is_text(dataset: Dataset) -> bool:
    return dataset.stream is not None


def split_size(ds: Dataset, split: str) -> int:
    """Examples in a split (text: predictable characters in its stream)."""
    if is_text(ds):
        return max(len(ds.stream[split]) - 1, 0)
    return len(ds.split(split))


def window_length(program: Program, dataset: Dataset) -> int:
    """Text: the window of one ``train_step`` call: k1, else the dataset's window."""
    plan = program.train
    if plan.k1 is not None:
        return plan.k1
    return int(dataset.info.get("window", 100))


def reach_length(program: Program, dataset: Dataset) -> int | None:
    """Text with bptt k2 > k1: the steps of one ``train_step`` call, ceil(k2 / k1) k1 (the
    k1 new characters and the steps before them that the gradient reaches); else None
    (a call is the k1 new characters, :func:`window_length`)."""
    k1, k2 = program.train.k1, program.train.k2
    if not is_text(dataset) or k1 is None or k2 is None or k2 <= k1:
        return None
    return -(-k2 // k1) * k1


def _as_model_input(batch: Batch, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = batch.x, batch.y
    if x.dtype.kind == "f":
        x = x.astype(dtype)
    if y.dtype.kind == "f":
        y = y.astype(dtype)
    return x, y


# ----------------------------------------------------------------- evaluation


def stream_windows(ds: Dataset, split: str, batch: int, window: int, reset: str,
                   start: int = 0) -> Iterator[Batch]:
    """Windows of a text split's stream (document resets only with ``reset: document``)."""
    starts = ds.doc_starts[split] if reset == "document" else None
    return _stream_windows(ds.stream[split], batch, window, starts, start)


def evaluate(c: Compiled, params: dict[str, Any], split: str,
             progress: Any = None) -> dict[str, float]:
    """Loss and metrics of ``params`` on a split (``{"loss": ..., <metric>: ...}``).

    ``progress`` (a reporter of rnnc.train.progress) is told the number of batches
    (windows of a text) and each one done: a large split shows how far it has got."""
    with np.errstate(all="ignore"):
        if progress is None:
            return _evaluate(c, params, split, lambda: None)
        progress.eval_start(split, eval_batches(c, split))
        try:
            return _evaluate(c, params, split, progress.eval_step)
        finally:
            progress.eval_end()


def eval_batches(c: Compiled, split: str) -> int:
    """How many forward calls ``evaluate`` makes on a split."""
    ds = c.dataset
    if is_text(ds):
        from rnnc.data import num_stream_windows

        n = len(ds.stream[split])
        return num_stream_windows(n, 1, window_length(c.program, ds)) if n >= 2 else 0
    return -(-len(ds.split(split)) // EVAL_BATCH)


def _evaluate(c: Compiled, params: dict[str, Any], split: str,
              advance: Callable[[], Any]) -> dict[str, float]:
    ds, module, plan = c.dataset, c.module, c.program.train
    scores = _Scores(ds.metric, "probs" if c.program.model.head.kind == "softmax" else "auto")
    if is_text(ds):
        # the split as one stream from its start (every character after the first is
        # predicted once, with all the context before it, as the state is carried and
        # reset): parallel rows would start cold in mid-text, drop the characters that
        # do not fill a row, and make the number depend on the batch size
        window = window_length(c.program, ds)
        if len(ds.stream[split]) < 2:
            raise TrainError(f"the {split} split is empty",
                             hint="give it a share with the dataset's split option")
        state = None
        for b in stream_windows(ds, split, 1, window, plan.reset):
            ys, state = module.forward(params, b.x, state, b.lengths, b.resets)
            scores.add(ys, b)
            advance()
    else:
        for b in iterate_batches(ds.split(split), EVAL_BATCH, None):
            x, _ = _as_model_input(b, plan.dtype)
            ys, _ = module.forward(params, x, None, b.lengths)
            scores.add(ys, b)
            advance()
    if not scores.batches:
        raise TrainError(f"the {split} split is empty",
                         hint="give it a share with the dataset's split option")
    metrics = scores.result()
    loss = metrics["mse"] if ds.metric == "mse" else metrics["cross_entropy"]
    return {"loss": loss, **metrics}


class _Scores:
    """The metrics of a split, accumulated batch by batch (window by window).

    Every metric is a mean over the valid steps or over the sequences, so each batch's
    value is summed weighted by its count and the batch's outputs dropped: kept and
    concatenated, a split's (N, T, classes) probabilities and their float64 logs took
    tens of bytes per step and class (10 GB for a 1.6 MB npz of 2,000 classes).
    """

    _PER_SEQUENCE = ("reber_string_accuracy",)

    def __init__(self, metric: str, outputs_are: str) -> None:
        self.metric, self.outputs_are = metric, outputs_are
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.batches = 0

    def add(self, outputs: Any, b: Batch) -> None:
        self.batches += 1
        values = evaluate_outputs(self.metric, np.asarray(outputs), b,
                                  outputs_are=self.outputs_are)
        per_step = b.y.ndim == (3 if self.metric == "mse" else 2)
        steps = int(np.sum(b.lengths)) if b.lengths is not None else b.y.shape[0] * b.y.shape[1]
        scored = None  # the steps (sequences) a class target counts at: not -1
        if self.metric != "mse":
            scored = int(np.sum(scored_mask(b.y, b.lengths)))
        for k, v in values.items():
            n = len(b.y) if k in self._PER_SEQUENCE or not per_step else steps
            if k in ("accuracy", "cross_entropy"):
                n = scored
            if k == "rmse" or n == 0:
                continue
            self.sums[k] = self.sums.get(k, 0.0) + v * n
            self.counts[k] = self.counts.get(k, 0) + n

    def result(self) -> dict[str, float]:
        out = {k: (self.sums[k] / self.counts[k] if self.counts.get(k) else math.nan)
               for k in METRIC_KEYS[self.metric]}
        if "rmse" in out:
            out["rmse"] = math.sqrt(out["mse"]) if out["mse"] == out["mse"] else math.nan
        return out


# ------------------------------------------------------------ early stopping


@dataclass(frozen=True)
class StopRule:
    """Which validation value picks the best epoch, and when to stop."""

    key: str  # e.g. "val_loss", "val_reber_accuracy"
    patience: int | None  # None: no early stopping (the key still picks the best)

    @property
    def maximize(self) -> bool:
        return not self.key.endswith(_LOWER_IS_BETTER)

    def better(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.maximize else value < best


def stop_rule(plan_early_stop: tuple[str, int] | None, dataset_metric: str,
              span: Any = None) -> StopRule:
    keys = ["val_loss"] + [f"val_{k}" for k in METRIC_KEYS[dataset_metric]]
    if plan_early_stop is None:
        return StopRule("val_loss", None)
    metric, patience = plan_early_stop
    key = metric if metric.startswith("val_") else f"val_{metric}"
    if key not in keys:
        raise TrainError(f"early_stop metric '{metric}' is not measured on this dataset",
                         span, did_you_mean(key, keys) or "expected one of: " + ", ".join(keys))
    return StopRule(key, patience)


# ---------------------------------------------------------------- the state


@dataclass(frozen=True)
class TrainState:
    """Everything that changes during training; replaced as a whole after each step, so
    an interruption at any moment leaves a consistent state to save."""

    params: dict[str, Any]
    opt_state: dict[str, Any]
    step: int = 0
    epoch: int = 0  # the epoch in progress (0-based)
    batch_index: int = 0  # batches of this epoch done
    stream_state: dict[str, Any] | None = None  # text: state carried into the next window
    rng: Any = None  # dropout RNG (JSON form), or None without dropout
    # sum of step losses weighted by what each loss is a mean over (valid steps; for a
    # `last` head, sequences), this epoch, and the sum of those weights
    epoch_loss: float = 0.0
    epoch_tokens: int = 0
    best: float | None = None  # best value of the stop rule's key
    best_epoch: int | None = None
    bad_epochs: int = 0
    finished: str | None = None  # why training ended ("epochs", "early_stop")
    elapsed: float = 0.0  # training seconds before this process


@dataclass
class TrainOptions:
    backend: str | None = None
    out: Path | None = None
    resume: bool = False
    force: bool = False
    devices: int = 1
    overrides: Overrides = field(default_factory=Overrides)
    stop_after_steps: int | None = None


class NonFinite(Exception):
    """Raised inside the loop when the loss or gradient norm is NaN or infinite."""


def check_sample_line(spec: A.Spec, program: Program, dataset: Dataset,
                      sample_cfg: dict[str, Any]) -> None:
    """A `sample` line that could never print (a model `step` cannot run, a prime with
    characters the data lacks) is refused before training, at the line, not at the
    first sample after `every` steps of work (or never, silently)."""
    from rnnc.train.sampling import encode_prime

    span = spec.train.key_span("sample")
    m = program.model
    why = ("the data is not text" if not is_text(dataset) or dataset.vocab is None else
           "a bidirectional layer needs the whole sequence"
           if any(layer.bidirectional for layer in m.layers) else
           "a layer that runs backward in time needs the whole sequence"
           if any("bwd" in layer.directions for layer in m.layers) else
           "the head is not a per-step softmax"
           if m.head.at != "per_step" or m.head.kind != "softmax" else None)
    if why is not None:
        raise TrainError(f"`sample` prints text from a character model, and this one "
                         f"cannot be sampled: {why}", span, "remove the sample line")
    prime = sample_cfg.get("prime")
    if prime:
        try:
            encode_prime(prime, dataset.vocab, "the sample prime")
        except TrainError as err:
            raise TrainError(err.message, span, err.hint) from None


def check_plan(spec: A.Spec, program: Program, dataset: Dataset,
               train_cfg: dict[str, Any]) -> None:
    """What `rnnc train` refuses about the train block before training, for `rnnc check`:
    text bptt k2 > k1 with a layer that runs backward, the early_stop metric and the
    sample line."""
    check_text_bptt(spec, program, dataset)
    stop_rule(program.train.early_stop, dataset.metric, spec.train.key_span("early_stop"))
    if train_cfg.get("sample"):
        check_sample_line(spec, program, dataset, train_cfg["sample"])


class Trainer:
    """One training run in one run folder (see :func:`train`)."""

    def __init__(self, c: Compiled, run_dir: Path, reporter, spec_sha: str,
                 stop_after: int | None = None, devices: int = 1):
        self.c = c
        self.run_dir = run_dir
        self.plan = c.program.train
        self.ds = c.dataset
        self.module = c.module
        self.reporter = reporter
        self.spec_sha = spec_sha
        self.stop_after = stop_after
        self.rule = stop_rule(self.plan.early_stop, self.ds.metric,
                              c.spec.train.key_span("early_stop"))
        for split in ("train", "val"):
            if split_size(self.ds, split) == 0:
                raise TrainError(f"the {split} split of the dataset is empty",
                                 c.spec.train.key_span("data"),
                                 "training needs both: give each a share with the dataset's "
                                 "split option, e.g. split: [0.8, 0.1, 0.1]")
        if is_text(self.ds) and split_size(self.ds, "train") < self.plan.batch:
            # each of the batch's parallel streams needs a character and the next one
            n = split_size(self.ds, "train")
            batch = c.spec.train.get("batch")  # its span: None when --batch gave it
            raise TrainError(
                f"the batch ({self.plan.batch}) is larger than the train part of the text "
                f"allows: it has {n} characters to predict, and each of the batch's parallel "
                "streams needs at least one", getattr(batch, "span", None),
                f"use a batch of at most {n}, or more text")
        self.dropout = uses_dropout(c.program)
        self.reach = reach_length(c.program, self.ds)  # None: a call is k1 new characters
        self.devices = devices
        self.train_step = self._train_step(devices)
        self.best_params: dict[str, Any] | None = None
        self.interrupted: int | bool = False  # the signal that asked the loop to stop
        self.t0 = time.perf_counter()
        self.sample_cfg = c.train_cfg.get("sample") or {}
        if c.train_cfg.get("sample"):
            self._check_sample_line()

    def _check_sample_line(self) -> None:
        check_sample_line(self.c.spec, self.c.program, self.ds, self.sample_cfg)

    def _train_step(self, devices: int):
        if devices == 1:
            return self.module.train_step
        if self.c.backend != "jax":
            raise TrainError(f"--devices {devices} needs the jax backend",
                             hint="add --backend jax")
        if not hasattr(self.module, "make_mesh"):
            raise TrainError(f"--devices {devices}: this JAX module has no data-parallel "
                             f"support (no make_mesh)",
                             hint="train on one device (leave out --devices)")
        import functools

        import jax

        if jax.device_count() < devices:
            raise TrainError(f"--devices {devices}, but JAX sees {jax.device_count()} device(s)",
                             hint="on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                                  "makes N devices")
        if self.plan.batch % devices:
            raise TrainError(f"the batch ({self.plan.batch}) does not split evenly over "
                             f"{devices} devices", hint="use a batch that is a multiple of it")
        return functools.partial(self.module.train_step, mesh=self.module.make_mesh(devices))

    # -- state
    def fresh_state(self) -> TrainState:
        params = self.module.init_params(seed=self.plan.seed, dtype=self.plan.dtype)
        rng = None
        if self.dropout:
            if self.c.backend == "jax":
                import jax

                rng = ckpt.rng_to_json(jax.random.PRNGKey(self.plan.seed))
            else:
                rng = ckpt.rng_to_json(np.random.default_rng([self.plan.seed, 1]))
        return TrainState(params=params, opt_state=self.module.init_opt_state(params), rng=rng)

    def state_from(self, cp: ckpt.Checkpoint) -> TrainState:
        r = cp.record
        # what load_checkpoint_at cannot check without the run: the position in the
        # epoch, and a dropout RNG of this backend where the model has dropout
        kind = "jax" if self.c.backend == "jax" else "numpy"
        problem = (
            f"its batch_index is {r['batch_index']}, but an epoch has {self.n_batches()} "
            "batches" if r["batch_index"] > self.n_batches() else
            "it has no dropout RNG state, and the model has dropout"
            if self.dropout and r["rng"] is None else
            f"its dropout RNG state is not one of the {self.c.backend} backend"
            if r["rng"] is not None and r["rng"].get("kind") != kind else None)
        if problem is not None:
            raise TrainError(f"checkpoint '{cp.path}' is damaged: {problem}",
                             hint="delete it, or train again with --force")
        return TrainState(
            params=cp.params, opt_state=cp.opt_state, step=r["step"], epoch=r["epoch"],
            batch_index=r["batch_index"], stream_state=cp.stream_state, rng=r["rng"],
            epoch_loss=r["epoch_loss"], epoch_tokens=r["epoch_tokens"], best=r["best"],
            best_epoch=r["best_epoch"], bad_epochs=r["bad_epochs"], finished=r["finished"],
            elapsed=r["elapsed"])

    def save(self, st: TrainState, best: bool = False, metrics: dict | None = None) -> Path:
        record = {
            "spec_sha256": self.spec_sha, "backend": self.c.backend, "rnnc": __version__,
            "step": st.step, "epoch": st.epoch, "batch_index": st.batch_index,
            "rng": st.rng, "epoch_loss": st.epoch_loss, "epoch_tokens": st.epoch_tokens,
            "best": st.best, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
            "best_key": self.rule.key, "finished": st.finished,
            "elapsed": st.elapsed + (time.perf_counter() - self.t0),
            "metrics": metrics or {}, "vocab": self.ds.vocab, "dtype": self.plan.dtype,
        }
        return ckpt.save_checkpoint(self.run_dir / CHECKPOINTS, st.params, st.opt_state,
                                    st.stream_state, record, best=best)

    # -- data
    def n_batches(self) -> int:
        if is_text(self.ds):
            from rnnc.data import num_stream_windows

            return num_stream_windows(len(self.ds.stream["train"]), self.plan.batch,
                                      window_length(self.c.program, self.ds))
        from rnnc.data import num_batches

        return num_batches(len(self.ds.train), self.plan.batch, drop_last=self.devices > 1)

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        """The epoch's batches from index ``start`` on (the same order on every resume)."""
        if is_text(self.ds):
            window = window_length(self.c.program, self.ds)
            reach = reach_length(self.c.program, self.ds)
            if reach is not None:
                from rnnc.data import reaching_stream_windows

                starts = self.ds.doc_starts["train"] if self.plan.reset == "document" else None
                return reaching_stream_windows(self.ds.stream["train"], self.plan.batch,
                                               window, reach, starts, start)
            return stream_windows(self.ds, "train", self.plan.batch, window, self.plan.reset,
                                  start)
        order_rng = np.random.default_rng([self.plan.seed, 0, epoch])
        # over several devices every batch must split evenly: the remainder is left out
        it = iterate_batches(self.ds.train, self.plan.batch, order_rng,
                             drop_last=self.devices > 1)
        for _ in range(start):
            next(it)
        return it

    # -- one step
    def step(self, st: TrainState, b: Batch) -> tuple[TrainState, dict[str, float]]:
        x, y = _as_model_input(b, self.plan.dtype)
        rng, rng_next = None, None
        if st.rng is not None:
            if st.rng["kind"] == "jax":
                import jax

                rng_next, rng = jax.random.split(ckpt.rng_from_json(st.rng))
            else:
                rng = rng_next = ckpt.rng_from_json(st.rng)
        state_in = st.stream_state if is_text(self.ds) else None
        if state_in is None and is_text(self.ds):
            # the stream's start: the zero state as a dict, as every later call carries
            # one (None, then a dict, is two call signatures: a JAX module compiled twice)
            state_in = self.module.initial_state(len(b), self.plan.dtype)
        t = time.perf_counter()
        # overflow shows up as a non-finite loss, which is checked below: no warnings
        with np.errstate(all="ignore"):
            # bptt k2 > k1 on text: the next window starts b.advance steps after this
            # one (0: at the same step, near the stream's start), from the state there
            carried = self.advance(st.params, b, state_in) if self.reach else None
            params, opt_state, final, m = self.train_step(
                st.params, st.opt_state, x, y, state_in, b.lengths, b.resets, rng=rng)
        if self.reach:
            final = carried
        loss, gnorm, lr = float(m["loss"]), float(m["grad_norm"]), float(m["lr"])
        seconds = time.perf_counter() - t
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise NonFinite(loss if not math.isfinite(loss) else gnorm)
        tokens = int(np.sum(b.lengths)) - b.context * len(b)  # the scored steps
        # the module's loss is a mean over valid steps, or over sequences for a `last`
        # head: weight it by that count, so train_loss is the epoch's mean per step (per
        # sequence) whatever the lengths and the size of the last, smaller batch
        weight = len(b) if self.c.program.model.head.at == "last" else tokens
        new = replace(
            st, params=params, opt_state=opt_state, step=st.step + 1,
            batch_index=st.batch_index + 1,
            stream_state=final if is_text(self.ds) else None,
            rng=None if rng_next is None else ckpt.rng_to_json(rng_next),
            epoch_loss=st.epoch_loss + loss * weight, epoch_tokens=st.epoch_tokens + weight)
        return new, {"loss": loss, "grad_norm": gnorm, "lr": lr,
                     "tokens_per_s": tokens / max(seconds, 1e-9)}

    def advance(self, params: dict[str, Any], b: Batch, state: Any) -> Any:
        """The state after the first ``b.advance`` steps of a window that reaches back,
        from the state entering it: the state the window's own forward pass has there,
        with the parameters of this update (before it; ``forward`` never drops out)."""
        n = b.advance
        if not n:
            return state
        resets = None if b.resets is None else b.resets[:, :n]
        _, final = self.module.forward(params, b.x[:, :n], state, None, resets)
        return final

    # -- the loop
    def run(self, st: TrainState, log) -> TrainState:
        self.t0 = time.perf_counter()
        self.state = st
        every = self.plan.checkpoint_every
        sample_every = self.plan.sample_every if self.can_sample() else 0
        if not getattr(self.reporter, "shows_samples", True):
            sample_every = 0
        n_batches = self.n_batches()
        keys = ["val_loss", f"val_{self.ds.metric}"]
        if self.rule.key not in keys:
            keys.append(self.rule.key)
        self.reporter.start(self.plan.epochs, n_batches, keys, self.ds.metric)
        # whatever ends the loop (an error included), the progress bar goes: a live bar
        # left behind hides the terminal's cursor and garbles the error's line
        try:
            with _sigint_to_flag(self):
                while self.state.epoch < self.plan.epochs and self.state.finished is None:
                    if self.interrupted:  # Ctrl-C during the validation pass
                        raise KeyboardInterrupt
                    st = self.state
                    self.reporter.epoch_start(st.epoch, st.batch_index)
                    for b in self.batches(st.epoch, st.batch_index):
                        try:
                            st, m = self.step(self.state, b)
                        except NonFinite as bad:
                            self._non_finite(float(bad.args[0]))
                        # the record first, then the state a stop saves: a second Ctrl-C
                        # between them saved a step whose record was never written (a
                        # record of a step not saved is dropped and written again by
                        # --resume)
                        log({"kind": "train", "step": st.step, "epoch": st.epoch + 1, **m})
                        self.state = st
                        self.reporter.step(st, m)
                        if sample_every and st.step % sample_every == 0:
                            self.reporter.sample(st.step, *self.sample(st.params, st.step))
                        if every and st.step % every == 0:
                            self.save(st)
                        if self.interrupted or (self.stop_after is not None
                                                and st.step >= self.stop_after):
                            raise KeyboardInterrupt
                    self.end_epoch(log)
        finally:
            self.reporter.stop()
        return self.state

    def end_epoch(self, log) -> None:
        st = self.state
        val = {f"val_{k}": v
               for k, v in evaluate(self.c, st.params, "val", progress=self.reporter).items()}
        train_loss = st.epoch_loss / st.epoch_tokens if st.epoch_tokens else math.nan
        record = {"kind": "val", "step": st.step, "epoch": st.epoch + 1,
                  "train_loss": train_loss, **val,
                  "time": st.elapsed + time.perf_counter() - self.t0}
        value = val[self.rule.key]
        improved = self.rule.better(value, st.best)
        best, best_epoch = (value, st.epoch + 1) if improved else (st.best, st.best_epoch)
        bad = 0 if improved else st.bad_epochs + 1
        finished = None
        if self.rule.patience is not None:
            if bad >= self.rule.patience:
                finished = "early_stop"
            elif self.rule.maximize and best is not None and best >= 1.0:
                finished = "early_stop"  # a perfect score cannot improve
        if st.epoch + 1 >= self.plan.epochs and finished is None:
            finished = "epochs"
        if improved:
            self.best_params = st.params
        new = replace(st, epoch=st.epoch + 1, batch_index=0, stream_state=None, epoch_loss=0.0,
                      epoch_tokens=0, best=best, best_epoch=best_epoch, bad_epochs=bad,
                      finished=finished)
        log(record)
        self.save(new, best=improved, metrics=record)
        self.state = new
        self.reporter.epoch_end(record, self.rule, improved, finished)

    def _non_finite(self, value: float) -> None:
        st = self.state
        where = f"step {st.step + 1} (epoch {st.epoch + 1}, batch {st.batch_index + 1})"
        name = ckpt.read_pointer(self.run_dir / CHECKPOINTS, "latest")
        keep = (f"the last checkpoint, {self.run_dir / CHECKPOINTS / name}, is kept"
                if name else "no checkpoint had been written yet")
        self.reporter.stop()
        raise TrainError(f"the loss or gradient norm became {value} at {where}; training "
                         f"stopped", hint=f"{keep}; try a smaller learning rate, gradient "
                                          f"clipping (clip norm 1.0) or a different init")

    # -- sampling
    def can_sample(self) -> bool:
        return can_sample(self.c.program, self.ds)

    def sample(self, params: dict[str, Any], step: int) -> tuple[str, str]:
        """``(prime, continuation)``: the prime `rnnc sample` would start from and the
        characters drawn after it."""
        from rnnc.train.sampling import default_prime, sample_text

        prime = default_prime(self.ds.vocab, self.sample_cfg)
        rng = np.random.default_rng([self.plan.seed, 2, step])
        return prime, sample_text(self.module, params, self.ds.vocab, prime,
                                  self.plan.sample_length,
                                  self.sample_cfg.get("temperature", 1.0), rng, self.plan.dtype)


def can_sample(program: Program, ds: Dataset) -> bool:
    """Character models: a text dataset, layers that run forward in time (step() runs
    no other), a per-step softmax head."""
    m = program.model
    return (is_text(ds) and ds.vocab is not None and m.head.at == "per_step"
            and m.head.kind == "softmax" and all(la.directions == ("fwd",) for la in m.layers))


@contextlib.contextmanager
def _sigint_to_flag(trainer: Trainer):
    """The first Ctrl-C (or SIGTERM) asks the loop to stop after the current step; a
    second one interrupts at once (the state is still consistent: it is replaced as a
    whole)."""

    def handler(signum, frame):
        trainer.interrupted = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, raise_terminated)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C stays a plain KeyboardInterrupt
        yield
        return
    previous_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


# --------------------------------------------------------------- the command


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    test: dict[str, float] | None
    interrupted_at: Path | None = None
    terminated: bool = False  # interrupted by SIGTERM rather than Ctrl-C
    # training finished and is saved, but Ctrl-C or SIGTERM stopped the test evaluation
    # (or came before it, during the last validation): `rnnc eval` (or `rnnc train
    # --resume`) gives the figures
    test_interrupted: bool = False
    before_test: bool = False  # the stop came before the test evaluation began


LOCK = ".rnnc-lock"


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (an flock on ``RUN_DIR/.rnnc-lock``, released
    when the process ends, however it ends); TrainError if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    try:
        f = open(run_dir / LOCK, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as err:
        raise TrainError(f"cannot write to the output folder '{run_dir}': "
                         f"{err.strerror or err}", hint="choose another folder with --out"
                         ) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise TrainError(f"'{run_dir}' is in use: another `rnnc train` ({who}) is "
                             "training into it",
                             hint="wait until it ends, or choose another folder with --out"
                             ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield


_STAGED = re.compile(r"\.tmp-[A-Za-z0-9_]{8}")  # tempfile.mkdtemp(prefix=".tmp-")
_REPLACING = re.compile(  # write_atomic's temporary file of a run folder's file
    r"\.(run\.json|spec\.rnn|spec\.yaml|spec\.yml|metrics\.jsonl)\.[A-Za-z0-9_]{8}\.tmp")
_STAGED_FILE = re.compile(r"\.?model_\w+\.py(\.[A-Za-z0-9_]{8}\.tmp)?")


def _remove_leftovers(run_dir: Path) -> None:
    """Remove what a `rnnc train` killed (kill -9, a power cut) left in the run folder: a
    module staging folder (holding nothing but a module and its temporary file) and the
    temporary files of files it was replacing. Only under the run's lock, so no other
    `rnnc train` is writing them; checkpoints/ removes its own (checkpoint._prune)."""
    with contextlib.suppress(OSError):
        for entry in run_dir.iterdir():
            if _REPLACING.fullmatch(entry.name) and entry.is_file() \
                    and not entry.is_symlink():
                entry.unlink()
            elif _STAGED.fullmatch(entry.name) and entry.is_dir() \
                    and not entry.is_symlink() and all(
                        _STAGED_FILE.fullmatch(f.name) and f.is_file()
                        for f in entry.iterdir()):
                shutil.rmtree(entry, ignore_errors=True)


def _prepare_dir(run_dir: Path) -> None:
    from rnnc.cli import file_in_the_way

    blocker = file_in_the_way(run_dir)
    if blocker is not None:
        raise TrainError(f"cannot write to the output folder '{run_dir}': '{blocker}' is a "
                         "file, not a folder", hint="choose another folder with --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".rnnc-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrainError(f"cannot write to the output folder '{run_dir}': "
                         f"{err.strerror or err}",
                         hint="choose another folder with --out") from None


# What a run replaced with --force leaves that its successor might not write again: the
# spec copy of the other syntax, another backend's module, plots of the old run.
_REPLACED = ("spec.rnn", "spec.yaml", "spec.yml", "curves.png", "gates.png")


def _start_over(run_dir: Path) -> None:
    for name in (CHECKPOINTS, METRICS):
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    # modules of other backends: only those rnnc generated (not a model_utils.py of
    # the user's in a run folder that is also a project folder)
    modules = [p for p in run_dir.glob("model_*.py") if _generated(p)]
    for p in [run_dir / name for name in _REPLACED] + modules:
        if p.is_file():
            p.unlink()


def _generated(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith("# Generated by rnnc")
    except OSError:
        return False


def _trim_metrics(path: Path, step: int, epoch: int, keep_test: bool = False) -> None:
    """Drop the records a resumed run will write again: those after the checkpoint's
    step, the validation records of epochs the checkpoint had not finished (``epoch``
    done: a stop while an epoch's checkpoint was written leaves that epoch's record, at
    the checkpoint's step, and the resumed run validates the epoch again), and the test
    record unless ``keep_test`` (a finished run writes no other)."""
    from rnnc.cli import write_atomic

    if not path.exists():
        return
    keep = []
    for line in _metrics_lines(path):
        rec = metrics_record(line)
        if rec is None:
            continue
        kind = rec["kind"]
        if kind == "val" and rec.get("epoch", 0) > epoch:
            continue
        if rec["step"] <= step and (keep_test or kind != "test"):
            keep.append(line)
    write_atomic(path, "".join(line + "\n" for line in keep))


def _metrics_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:  # a folder in its place, unreadable
        raise TrainError(f"cannot read '{path}': {err.strerror or err}",
                         hint="remove what is in its place") from None


def _has_test_record(path: Path) -> bool:
    """Whether the metrics file holds a test record (a finished run evaluated the test
    split; one stopped during that evaluation has none)."""
    if not path.exists():
        return False
    for line in _metrics_lines(path):
        rec = metrics_record(line)
        if rec is not None and rec["kind"] == "test":
            return True
    return False


def _batch_seed_lr(spec: A.Spec, overrides: Overrides) -> dict[str, Any]:
    """The batch, seed and learning rate a run of `spec` with these overrides trains with."""
    from rnnc.backends.numpy.runtime_optim import UPDATER_DEFAULTS

    _, cfg = validate(apply_overrides(spec, overrides))
    name, opts = cfg["updater"]
    lr = (opts or {}).get("lr", UPDATER_DEFAULTS[name]["lr"])
    return {"batch": cfg["batch"], "seed": cfg["seed"], "lr": lr}


def train(spec_path: Path, opts: TrainOptions, reporter) -> TrainResult:
    """``rnnc train``: compile, train, evaluate; returns where things are."""
    spec_path = Path(spec_path)
    original = load_spec(spec_path)
    sha = spec_hash(original)
    run_dir = Path(opts.out) if opts.out is not None else Path("runs") / spec_path.stem
    overrides = opts.overrides
    backend = opts.backend
    resume_from: ckpt.Checkpoint | None = None
    if opts.resume:
        record = read_run(run_dir) if (run_dir / RUN_RECORD).exists() else None
        if not ckpt.holds_checkpoints(run_dir / CHECKPOINTS):
            raise TrainError(f"there is no checkpoint to resume in '{run_dir}'",
                             hint="leave out --resume to start a new run")
        if record is None:
            raise TrainError(f"'{run_dir}' holds checkpoints but no {RUN_RECORD}: it cannot "
                             "be resumed", hint="start over with --force, or train into "
                                                "another folder with --out")
        if record["spec_sha256"] != sha:
            raise TrainError(
                f"'{run_dir}' was trained from a different spec (sha256 "
                f"{record['spec_sha256'][:12]}…, this one is {sha[:12]}…): refusing to resume",
                hint="train the changed spec into a new folder (--out), or restore the spec")
        if backend is not None and backend != record["backend"]:
            raise TrainError(f"'{run_dir}' was trained with the {record['backend']} backend",
                             hint=f"resume with --backend {record['backend']}")
        backend = record["backend"]
        before = Overrides.from_dict(record.get("overrides"))
        was = _batch_seed_lr(original, before)
        for key in ("batch", "seed", "lr"):
            now = getattr(overrides, key)
            if now is not None and now != was[key]:
                source = f"--{key}" if getattr(before, key) is not None else "the spec's"
                raise TrainError(f"--{key} {now:g} differs from the run's {key} {was[key]:g} "
                                 f"({source}): refusing to resume",
                                 hint="resume with the same settings (only --epochs may change)")
        overrides = replace(before, epochs=overrides.epochs or before.epochs)
        # the latest checkpoint, or where it is gone or damaged the newest whole one: from
        # any of them the run goes on exactly as it would have
        resume_from, skipped = ckpt.load_newest(run_dir / CHECKPOINTS)
        for line in skipped:
            reporter.note(f"note: {line}; resuming from {resume_from.path.name}, the newest "
                          "whole checkpoint")
        if resume_from.record.get("spec_sha256") != sha:
            raise TrainError(f"the checkpoint in '{run_dir}' belongs to another spec",
                             hint="train into a new folder with --out")
        r, asked = resume_from.record, opts.overrides.epochs
        if asked is not None and r["finished"] is None and (
                r["epoch"] > asked or (r["epoch"] == asked and r["batch_index"] > 0)):
            # it said "resuming" and trained nothing, then tested the unfinished epoch
            raise TrainError(f"--epochs {asked}, but the run in '{run_dir}' is already in "
                             f"epoch {r['epoch'] + 1}: there is nothing to resume",
                             hint="give a larger --epochs to go on; `rnnc eval "
                                  f"{run_dir} --checkpoint latest` evaluates it as it is")
    else:
        # any checkpoint, even one a damaged or deleted pointer no longer names: only
        # --force replaces a run
        if ckpt.holds_checkpoints(run_dir / CHECKPOINTS) and not opts.force:
            raise TrainError(f"'{run_dir}' already holds a trained run",
                             hint="continue it with --resume, start over with --force, or "
                                  "choose another folder with --out")
    if backend is None:
        backend = default_backend()
    # a folder that is not a run (--out . in a project, say) is trained into only where
    # that replaces none of its files: starting over deletes a run's checkpoints/,
    # metrics.jsonl, spec copies, plots and model_*.py, which there would be the user's
    is_run = (run_dir / RUN_RECORD).is_file() or ckpt.holds_checkpoints(run_dir / CHECKPOINTS)
    if not opts.resume and not is_run:
        names = (CHECKPOINTS, METRICS, *_REPLACED, module_path(run_dir, backend).name)
        clash = [n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]
        if clash:
            raise TrainError(f"'{run_dir}' is not a run folder, and training into it would "
                             f"replace its {', '.join(clash)}",
                             hint="choose a new or empty folder with --out")
    # the outermost folder this run creates: removed again if the run cannot start
    created = next((p for p in reversed((run_dir, *run_dir.parents)) if not p.exists()), None)
    _prepare_dir(run_dir)
    # one `rnnc train` at a time in a run folder: a second one would delete and interleave
    # the first one's checkpoints and metrics
    with _run_lock(run_dir):
        _remove_leftovers(run_dir)
        # Everything that can reject the spec, its data or the options happens before the
        # folder is touched: a new run's module is built in a temporary folder, and a run
        # replaced with --force is only deleted once its successor is ready to train.
        # A resumed run's module is staged too: its data may have changed since (then the
        # run folder is left exactly as it was).
        spec = apply_overrides(original, overrides)
        module_file = module_path(run_dir, backend)
        staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".tmp-"))
        try:
            c = compile_for_training(spec, spec_path.parent, backend, staging / module_file.name)
            if opts.resume:
                check_same_data(record, c.dataset, run_dir)
            trainer = Trainer(c, run_dir, reporter, sha, opts.stop_after_steps, opts.devices)
            # a fresh run's parameters and updater state (too large for memory: stop here)
            fresh = trainer.fresh_state() if resume_from is None else None
            if not opts.resume and is_run:
                _start_over(run_dir)
            try:
                os.replace(staging / module_file.name, module_file)
            except OSError as err:  # a folder in its place
                raise TrainError(f"cannot write '{module_file}': {err.strerror or err}",
                                 hint="remove what is in its place") from None
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        from rnnc.cli import write_atomic

        suffix = spec_path.suffix if spec_path.suffix in (".rnn", ".yaml", ".yml") else ".rnn"
        write_atomic(run_dir / f"spec{suffix}", spec_path.read_bytes())
        ds = c.dataset
        write_atomic(run_dir / RUN_RECORD, json.dumps({
            "spec": str(spec_path.resolve()), "spec_copy": f"spec{suffix}", "spec_sha256": sha,
            "backend": backend, "module": module_path(run_dir, backend).name,
            "base_dir": str(spec_path.parent.resolve()), "overrides": overrides.as_dict(),
            "data": {"name": c.program.train.data[0], "options": ds.info.get("options"),
                     "seed": c.program.train.seed, "sha256": ds.fingerprint()},
            "sizes": {"n_in": ds.n_in, "n_out": ds.n_out, "task": ds.task},
            "metric": ds.metric, "vocab": ds.vocab, "rnnc": __version__,
        }, indent=1) + "\n")

        if resume_from is not None:
            state = trainer.state_from(resume_from)
            if overrides.epochs is not None and state.finished == "epochs" \
                    and state.epoch < c.program.train.epochs:
                state = replace(state, finished=None)
            # a finished run writes no more records but its test one: its records stay
            _trim_metrics(run_dir / METRICS, state.step, state.epoch,
                          keep_test=state.finished is not None)
            best = ckpt.read_pointer(run_dir / CHECKPOINTS, "best")
            if best is not None:
                trainer.best_params = ckpt.load_checkpoint(run_dir / CHECKPOINTS, "best").params
            if state.finished is not None:
                reporter.note(f"the run in {run_dir} already finished ({state.finished}) at "
                              f"epoch {state.epoch}, step {state.step}")
                if split_size(c.dataset, "test") == 0 or _has_test_record(run_dir / METRICS):
                    return TrainResult(run_dir, state, None)
                # stopped during its test evaluation (Ctrl-C, SIGTERM): that alone is left
                reporter.note("its test evaluation did not finish: evaluating the test split")
            else:
                reporter.note(f"resuming {run_dir} at step {state.step} (epoch "
                              f"{state.epoch + 1}, batch {state.batch_index})")
        else:
            state = fresh
        try:
            # unbuffered: each record is written at once, and a write that fails part-way
            # (a full disk) is cut off again (below), never left as a half-written line
            metrics_file = open(run_dir / METRICS, "ab", buffering=0)  # noqa: SIM115
            whole = metrics_file.seek(0, os.SEEK_END)  # bytes of whole records
        except OSError as err:
            raise TrainError(f"cannot write '{run_dir / METRICS}': {err.strerror}") from None

        def log(rec: dict[str, Any]) -> None:
            nonlocal whole
            data = (json.dumps(rec) + "\n").encode("utf-8")
            try:
                done = 0
                while done < len(data):  # a raw write may write part of it
                    done += metrics_file.write(data[done:])
            except OSError as err:
                with contextlib.suppress(OSError):
                    os.ftruncate(metrics_file.fileno(), whole)
                raise TrainError(f"cannot write '{run_dir / METRICS}': {err.strerror or err}",
                                 hint="check the free disk space and the folder's permissions"
                                 ) from None
            whole += len(data)

        try:
            try:
                if state.finished is None:
                    state = trainer.run(state, log)
            except KeyboardInterrupt as err:
                trainer.reporter.stop()
                where = trainer.save(trainer.state)
                terminated = isinstance(err, Terminated) or trainer.interrupted == signal.SIGTERM
                return TrainResult(run_dir, trainer.state, None, interrupted_at=where,
                                   terminated=terminated)
            params = trainer.best_params if trainer.best_params is not None else state.params
            if split_size(c.dataset, "test") == 0:
                return TrainResult(run_dir, state, None)
            if trainer.interrupted:
                # a Ctrl-C or SIGTERM during the last epoch's validation (only a flag: the
                # loop had no step left to stop after) stops here, not after the test
                return TrainResult(run_dir, state, None, test_interrupted=True,
                                   terminated=trainer.interrupted == signal.SIGTERM,
                                   before_test=True)
            # Training is over and saved (its last checkpoint is the finished state): a
            # Ctrl-C or SIGTERM here leaves the run whole, without its test record, which
            # `rnnc eval` or `rnnc train --resume` gives
            try:
                test = evaluate(c, params, "test", progress=reporter)
            except KeyboardInterrupt as err:
                return TrainResult(run_dir, state, None, terminated=isinstance(err, Terminated),
                                   test_interrupted=True)
            log({"kind": "test", "step": state.step, "epoch": state.epoch,
                 **{f"test_{k}": v for k, v in test.items()}})
        finally:
            with contextlib.suppress(OSError):
                metrics_file.close()
        return TrainResult(run_dir, state, test)


# --------------------------------------------------- reading a finished run


def _chars(chars: list[str]) -> str:
    shown = ", ".join(repr(ch) for ch in chars[:10])
    return shown + (f" and {len(chars) - 10} more" if len(chars) > 10 else "")


def data_mismatch(record: dict[str, Any], ds: Dataset) -> str | None:
    """How ``ds`` (the run's dataset, built again now) no longer fits the model the run
    trained, or None: a changed task, input or output size, or vocabulary."""
    before = record.get("vocab")
    if isinstance(before, list) and ds.vocab is not None and list(ds.vocab) != before:
        new = [ch for ch in ds.vocab if ch not in before]
        gone = [ch for ch in before if ch not in ds.vocab]
        if new:
            return f"its vocabulary has new characters: {_chars(new)}"
        if gone:
            return f"its vocabulary lost characters: {_chars(gone)}"
        return "its vocabulary has the same characters in another order"
    sizes = record.get("sizes") if isinstance(record.get("sizes"), dict) else {}
    for key, now in (("task", ds.task), ("n_in", ds.n_in), ("n_out", ds.n_out)):
        if key in sizes and sizes[key] != now:
            return f"its {key} is now {now}, the model's is {sizes[key]}"
    return None


def _data_hint(ds: Dataset, what: str) -> str:
    path = ds.info.get("path")
    where = f"the data file {path}" if path else "the dataset"
    return f"{where} changed since the run was trained: restore it, or {what}"


def check_same_data(record: dict[str, Any], ds: Dataset, run_dir: Path) -> None:
    """``--resume``: TrainError unless ``ds`` is the data the run was trained on."""
    problem = data_mismatch(record, ds)
    recorded = record.get("data", {}).get("sha256")
    if problem is None and recorded is not None and recorded != ds.fingerprint():
        problem = "the examples differ"
    if problem is not None:
        raise TrainError(f"the data of '{run_dir}' changed since it was trained ({problem}): "
                         "refusing to resume",
                         hint=_data_hint(ds, "train the new data into a new folder (--out)"))


def check_data_fits(record: dict[str, Any], ds: Dataset, run_dir: Path) -> None:
    """``eval``, ``plot --gates``: TrainError if ``ds`` no longer fits the run's model."""
    problem = data_mismatch(record, ds)
    if problem is not None:
        raise TrainError(f"the data no longer fits the model in '{run_dir}': {problem}",
                         hint=_data_hint(ds, "train a new run on the new data"))


def data_changed(record: dict[str, Any], ds: Dataset) -> bool:
    """Whether ``ds`` differs from the data the run recorded (False for old runs)."""
    recorded = record.get("data", {}).get("sha256")
    return recorded is not None and recorded != ds.fingerprint()


def load_run_checkpoint(run_dir: Path, record: dict[str, Any], c: Compiled,
                        which: str) -> ckpt.Checkpoint:
    """A run folder's ``best``/``latest`` checkpoint, checked against the run: trained
    from the run's spec, with the parameters (names and shapes) its module has."""
    cp = ckpt.load_checkpoint(Path(run_dir) / CHECKPOINTS, which)
    hint = "checkpoints/ does not match the rest of the run folder: train the run again " \
           "(rnnc train SPEC --out RUN_DIR --force)"
    if cp.record["spec_sha256"] != record["spec_sha256"]:
        raise TrainError(f"checkpoint '{cp.path}' was trained from another spec than the run "
                         f"in '{run_dir}'", hint=hint)
    want = {k: tuple(v) for k, v in c.module.PARAM_SHAPES.items()}
    have = {k: tuple(v.shape) for k, v in cp.params.items()}
    if have != want:
        bad = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        name = bad[0]
        what = (f"'{name}' has shape {have[name]}, the model's is {want[name]}"
                if name in want and name in have else
                f"parameter '{name}' is {'missing' if name in want else 'not in the model'}")
        raise TrainError(f"checkpoint '{cp.path}' does not fit the run's model: {what}",
                         hint=hint)
    return cp


def open_run(run_dir: Path, with_data: bool = True) -> tuple[dict[str, Any], Compiled]:
    """A run folder's record and its compiled model, re-created from the run's own spec
    copy and module file (``eval``, ``sample`` and ``plot`` use this)."""
    from rnnc.compiler import build
    from rnnc.train.runs import sizes_from

    run_dir = Path(run_dir)
    record = read_run(run_dir)
    spec = apply_overrides(load_spec(run_dir / record["spec_copy"]),
                           Overrides.from_dict(record.get("overrides")))
    _, train_cfg = validate(spec)
    base = Path(record["base_dir"])
    dataset = build_data(spec, train_cfg, base) if with_data else None
    if dataset is not None:
        check_data_fits(record, dataset, run_dir)
    program = build(spec, sizes_from(record), base_dir=base)
    enable_precision(record["backend"], program.train.dtype)
    module = import_module_file(run_dir / record["module"])
    return record, Compiled(spec, program, dataset, module, record["backend"], train_cfg)
