"""Training commands (train, eval, sample, plot) -- registered on the CLI app."""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from rnnc.errors import TrainError


MAX_SAMPLE_LENGTH = 1_000_000
"""The most characters `rnnc sample --length` generates (one at a time: a million takes
minutes; 10**20 would never end)."""

RunArg = Annotated[Path, typer.Argument(help="A run folder written by `rnnc train`.")]


def _train(
    spec: Annotated[Path, typer.Argument(help="A spec file (.yaml or .rnn) with a train block.")],
    backend: Annotated[str | None, typer.Option(
        "--backend", "-b", help="numpy or jax (default: jax where it imports, else numpy).")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder (default: runs/<spec name>).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in the folder from its latest checkpoint.")] = False,
    force: Annotated[bool, typer.Option(
        help="Start over in a folder that already holds a run (its checkpoints are deleted).")
    ] = False,
    devices: Annotated[int, typer.Option(
        min=1, help="Data-parallel devices (JAX backend).")] = 1,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the spec's epochs.")
                      ] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="Override the spec's batch size.")
                     ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override the spec's seed.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the updater's learning rate.")
                  ] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar: one line per epoch.")] = False,
    stop_after_steps: Annotated[int | None, typer.Option(
        hidden=True, help="Act as if Ctrl-C came after this many steps (tests).")] = None,
) -> None:
    """Train a spec: compile it, train on its dataset, evaluate, checkpoint."""
    from rnnc.train.driver import TrainOptions, train
    from rnnc.train.progress import QuietReporter, RichReporter
    from rnnc.train.runs import Overrides

    if lr is not None and not 0 < lr < float("inf"):  # also refuses NaN
        raise TrainError(f"--lr must be a finite positive number, not {lr}")
    if resume and force:  # --resume went on and --force was silently ignored
        raise TrainError("--resume continues the run in the folder and --force deletes it: "
                         "give one of them")
    reporter = QuietReporter() if quiet else RichReporter()
    opts = TrainOptions(
        backend=backend, out=out, resume=resume, force=force, devices=devices,
        overrides=Overrides(epochs=epochs, batch=batch, seed=seed, lr=lr),
        stop_after_steps=stop_after_steps)
    result = train(spec, opts, reporter)
    run_dir = result.run_dir
    if result.interrupted_at is not None:
        how = "terminated" if result.terminated else "interrupted"
        typer.echo(f"{how} at step {result.state.step}: checkpoint saved in "
                   f"{result.interrupted_at}", err=True)
        # a command to copy: paths with spaces or quotes are quoted for the shell
        typer.echo(f"resume with: rnnc train {shlex.quote(str(spec))} --out "
                   f"{shlex.quote(str(run_dir))} --resume", err=True)
        raise typer.Exit(143 if result.terminated else 130)
    if result.test_interrupted:
        how = "terminated" if result.terminated else "interrupted"
        when = "before" if result.before_test else "during"
        typer.echo(f"{how} {when} the test evaluation: training finished at step "
                   f"{result.state.step} and is saved in {run_dir}", err=True)
        typer.echo(f"the test figures: rnnc eval {shlex.quote(str(run_dir))} (or resume with: "
                   f"rnnc train {shlex.quote(str(spec))} --out {shlex.quote(str(run_dir))} "
                   "--resume, which evaluates it and records it in the run)", err=True)
        raise typer.Exit(143 if result.terminated else 130)
    if result.test is not None:
        parts = "  ".join(f"test_{k} {v:.4f}" for k, v in result.test.items())
        best = result.state.best_epoch
        which = f"best epoch {best}" if best is not None else \
            "no best epoch (no validation value was finite): the last parameters"
        typer.echo(f"test ({result.state.step} steps, {which}): {parts}")
    typer.echo(f"run folder: {run_dir}")


def _check_checkpoint(checkpoint: str) -> None:
    if checkpoint not in ("best", "latest"):
        raise TrainError(f"unknown checkpoint '{checkpoint}'", hint="use best or latest")


def _eval(
    run_dir: RunArg,
    split: Annotated[str, typer.Option(help="test, val or train.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best or latest.")] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar while it evaluates.")] = False,
) -> None:
    """Metrics of a run's best (or latest) checkpoint on a split."""
    from rnnc.errors import did_you_mean
    from rnnc.train.driver import data_changed, evaluate, load_run_checkpoint, open_run
    from rnnc.train.progress import QuietReporter, RichReporter

    if split not in ("train", "val", "test"):
        raise TrainError(f"unknown split '{split}'",
                         hint=did_you_mean(split, ["train", "val", "test"]))
    _check_checkpoint(checkpoint)
    record, c = open_run(run_dir)
    cp = load_run_checkpoint(run_dir, record, c, checkpoint)
    if data_changed(record, c.dataset):
        path = c.dataset.info.get("path")
        typer.echo(f"note: the data ({path or 'the dataset'}) changed since '{run_dir}' was "
                   "trained; these metrics are for the data as it is now", err=True)
    # a bar on stderr where that is a terminal (never in the printed metrics)
    metrics = evaluate(c, cp.params, split, progress=QuietReporter() if quiet else RichReporter())
    if as_json:
        # strict JSON (jq, JavaScript): a non-finite metric (a diverged model) is null
        finite = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
        typer.echo(json.dumps({"split": split, "checkpoint": cp.path.name, "step": cp.step,
                               "metrics": finite}, indent=2, allow_nan=False))
        return
    typer.echo(f"{split} split, checkpoint {cp.path.name} (step {cp.step}):")
    for k, v in metrics.items():
        typer.echo(f"  {k:<24} {v:.6f}")


def _sample(
    run_dir: RunArg,
    prime: Annotated[str | None, typer.Option(help="Text to start from (fed first).")] = None,
    length: Annotated[int, typer.Option(
        min=1, max=MAX_SAMPLE_LENGTH,
        help=f"Characters to generate (at most {MAX_SAMPLE_LENGTH:,}).")] = 200,
    temperature: Annotated[float, typer.Option(
        help="Below 1: safer choices; above 1: more surprise.")] = 1.0,
    seed: Annotated[int, typer.Option(min=0, help="Sampling seed.")] = 0,
    checkpoint: Annotated[str, typer.Option(help="best or latest.")] = "best",
) -> None:
    """Generate text from a character model, one character at a time."""
    from rnnc.train.driver import load_run_checkpoint, open_run
    from rnnc.train.runs import read_run
    from rnnc.train.sampling import default_prime, sample_text

    _check_checkpoint(checkpoint)
    record = read_run(run_dir)
    if record["data"]["name"] != "text":
        raise TrainError(f"'{run_dir}' is not a character model (it was trained on "
                         f"'{record['data']['name']}'); sample needs a text dataset",
                         hint="train a spec with `data text(path: ...)` "
                         "(YAML: `data: {text: {path: ...}}`)")
    _, c = open_run(run_dir, with_data=False)
    m = c.program.model
    if any(layer.directions != ("fwd",) for layer in m.layers) or m.head.at != "per_step":
        raise TrainError("sampling needs a model whose layers all run forward in time, with a "
                         "per-step head")
    cp = load_run_checkpoint(run_dir, record, c, checkpoint)
    vocab = record["vocab"]  # read_run checked it: a text run's characters
    if cp.record.get("vocab") not in (None, vocab):
        raise TrainError(f"checkpoint '{cp.path}' does not match the run in '{run_dir}': its "
                         "vocabulary differs from the run's",
                         hint="checkpoints/ does not match the rest of the run folder: train "
                              "the run again (rnnc train SPEC --out RUN_DIR --force)")
    if prime is None:
        prime = default_prime(vocab, c.train_cfg.get("sample"))
    # printed as it is drawn: a long sample shows progress, and a Ctrl-C keeps what is out
    started = []

    def emit(text: str) -> None:
        started.append(True)
        typer.echo(text, nl=False)
        sys.stdout.flush()

    try:
        sample_text(c.module, cp.params, vocab, prime, length, temperature,
                    np.random.default_rng(seed), c.program.train.dtype, emit=emit)
    finally:
        if started:
            typer.echo("")


_EXAMPLE = re.compile(r"^(train|val|test):(\d+)$")


def _gate_input(c, record: dict, text: str, run_dir: Path) -> tuple[np.ndarray, list[str]]:
    """``(1, T)`` ids or ``(1, T, F)`` features for ``--gates``, and a label per step."""
    m = _EXAMPLE.match(text)
    vocab = record.get("vocab")
    if m is not None:
        from rnnc.train.driver import build_data, check_data_fits

        ds = build_data(c.spec, c.train_cfg, Path(record["base_dir"]))
        check_data_fits(record, ds, run_dir)
        split = ds.split(m.group(1))
        i = int(m.group(2))
        if i >= len(split):
            raise TrainError(f"the {m.group(1)} split has {len(split)} examples, so there is "
                             f"no example {i}")
        n = int(split.lengths[i])
        x = split.x[i: i + 1, :n]
        labels = [vocab[int(t)] for t in x[0]] if vocab and x.ndim == 2 else \
            [str(t) for t in range(n)]
        return x, labels
    if c.program.model.input.kind == "dense" or not vocab:
        # token ids without symbols (npz data) are no feature vectors
        what = "reads feature vectors, not symbols" if c.program.model.input.kind == \
            "dense" else "reads token ids that have no symbols (its data gives bare ids)"
        raise TrainError(f"this model {what}: --gates '{text}' cannot be fed",
                         hint="pick an example of the dataset instead, e.g. --gates test:0")
    from rnnc.train.sampling import encode_prime

    if not text:
        raise TrainError("the --gates input is empty", hint="e.g. --gates BTSSXXTVVE")
    return np.array([encode_prime(text, vocab, "the --gates text")], dtype=np.int32), list(text)


def _plot(
    run_dir: RunArg,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output",
        help="PNG to write (default: RUN_DIR/curves.png, gates.png or input_grads.png).")
    ] = None,
    gates: Annotated[str | None, typer.Option(
        help="Plot every gate's activation over this input instead: a string of symbols "
             "(e.g. BTSSXXTVVE) or an example SPLIT:INDEX (e.g. test:0).")] = None,
    input_grads: Annotated[str | None, typer.Option(
        "--input-grads",
        help="Plot how far back the error reaches instead: the norm of the loss's gradient "
             "with respect to the input at each step, averaged over up to 64 examples of "
             "this split (train, val or test), at initialisation and at the checkpoint.")
    ] = None,
    checkpoint: Annotated[str, typer.Option(
        help="best or latest (for --gates and --input-grads).")] = "best",
) -> None:
    """PNG of a run's training and validation curves and gradient norm, of its gates
    over one input, or of its input gradients over time."""
    from rnnc.train.plotting import plot_curves
    from rnnc.train.runs import read_metrics, read_run

    run_dir = Path(run_dir)
    _check_checkpoint(checkpoint)
    if output is not None and output.suffix and output.suffix.lower() != ".png":
        raise TrainError(f"rnnc plot draws PNG images, and '{output}' names a "
                         f"{output.suffix} file", hint=f"write it to {output.with_suffix('.png')}")
    record = read_run(run_dir)
    if gates is not None and input_grads is not None:
        raise TrainError("--gates and --input-grads draw different figures",
                         hint="pick one of them")
    if input_grads is not None:
        _plot_input_grads(run_dir, record, input_grads, checkpoint, output)
        return
    if gates is None:
        from rnnc.ir.lower import validate
        from rnnc.spec import load_spec

        path = output or run_dir / "curves.png"
        _, train_cfg = validate(load_spec(run_dir / record["spec_copy"]))
        clip_norm = (train_cfg.get("clip") or {}).get("norm")
        plot_curves(read_metrics(run_dir), record["metric"], path,
                    title=f"{Path(record['spec']).name} ({record['backend']})",
                    clip_norm=clip_norm)
        typer.echo(f"wrote {path}")
        return
    from rnnc.compiler import build
    from rnnc.ir.passes import PIPELINE
    from rnnc.train.driver import load_run_checkpoint, open_run
    from rnnc.train.gates import interpret
    from rnnc.train.plotting import plot_gates
    from rnnc.train.runs import sizes_from

    _, c = open_run(run_dir, with_data=False)
    xs, labels = _gate_input(c, record, gates, run_dir)
    # the cell as lowered (no fusion): every equation keeps its own name
    raw = build(c.spec, sizes_from(record), disable=PIPELINE, base_dir=record["base_dir"])
    cp = load_run_checkpoint(run_dir, record, c, checkpoint)
    result = interpret(raw, cp.params, xs)
    path = output or run_dir / "gates.png"
    plot_gates(result.gates, labels, path, title=f"gate activations, {cp.path.name}")
    typer.echo(f"wrote {path} ({len(result.gates)} gates over {xs.shape[1]} steps)")


def input_gradient_norms(module, params, x, y, lengths, resets=None) -> np.ndarray:
    """``(T,)`` mean over the examples of ``||d loss / d x_t||`` at each step ``t`` (the
    encoded input: one-hot or embedded tokens, or the features), over the examples
    whose length covers ``t``; NaN where none does."""
    _, grads, _ = module.loss_and_grad(params, x, y, lengths=lengths, resets=resets,
                                       wrt_inputs=True)
    norms = np.linalg.norm(np.asarray(grads["xs"], dtype=np.float64), axis=2)
    valid = np.arange(norms.shape[1])[None, :] < np.asarray(lengths)[:, None]
    count = valid.sum(axis=0)
    total = np.where(valid, norms, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _plot_input_grads(run_dir: Path, record: dict, split_name: str, checkpoint: str,
                      output: Path | None) -> None:
    from rnnc.errors import did_you_mean
    from rnnc.train.driver import build_data, check_data_fits, load_run_checkpoint, open_run
    from rnnc.train.plotting import plot_input_grads

    if split_name not in ("train", "val", "test"):
        raise TrainError(f"unknown split '{split_name}'",
                         hint=did_you_mean(split_name, ["train", "val", "test"]))
    _, c = open_run(run_dir, with_data=False)
    ds = build_data(c.spec, c.train_cfg, Path(record["base_dir"]))
    check_data_fits(record, ds, run_dir)
    split = ds.split(split_name)
    n = min(64, len(split))
    if n == 0:
        raise TrainError(f"the {split_name} split of the dataset is empty")
    dtype = c.program.train.dtype
    x, y, lengths = split.x[:n], split.y[:n], split.lengths[:n]
    x = x.astype(dtype) if x.dtype.kind == "f" else x
    y = y.astype(dtype) if y.dtype.kind == "f" else y
    resets = None
    if c.train_cfg.get("reset") == "document" and split.resets is not None:
        resets = split.resets[:n]
    cp = load_run_checkpoint(run_dir, record, c, checkpoint)
    start = c.module.init_params(seed=c.program.train.seed, dtype=dtype)
    curves = {"at initialisation": input_gradient_norms(c.module, start, x, y, lengths, resets),
              f"{checkpoint} checkpoint (step {cp.step})":
                  input_gradient_norms(c.module, cp.params, x, y, lengths, resets)}
    path = output or run_dir / "input_grads.png"
    head = c.program.model.head.at
    plot_input_grads(curves, path, title=f"{Path(record['spec']).name}: |d loss / d x_t|, "
                     f"{n} {split_name} examples, head at {head}")
    typer.echo(f"wrote {path} ({n} {split_name} examples, {x.shape[1]} steps)")


def register(app) -> None:
    """Add the training commands to ``app``."""
    from rnnc.cli import handles_errors

    app.command("train")(handles_errors(_train))
    app.command("eval")(handles_errors(_eval))
    app.command("sample")(handles_errors(_sample))
    app.command("plot")(handles_errors(_plot))
