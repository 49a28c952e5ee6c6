"""The ``rnnc`` command line (typer).

Every command turns an :class:`~rnnc.errors.RnncError` into one located
message and a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from rnnc import __version__
from rnnc.errors import RnncError, Terminated, raise_terminated


app = typer.Typer(
    name="rnnc",
    help="A compiler for recurrent neural networks: specs to standalone NumPy and JAX modules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rnnc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug


def fail(err: RnncError) -> None:
    """Print an error the way every rnnc command does and exit 1."""
    typer.echo(err.render(), err=True)
    raise typer.Exit(1)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: RnncError -> located message and exit 1; running out of memory (a model
    or batch too large for this machine) -> one message and exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            # SIGTERM ends a command like Ctrl-C (temporary files removed, `train` saves a
            # checkpoint), not at once with whatever it was writing left behind
            previous = signal.signal(signal.SIGTERM, raise_terminated)
        except ValueError:  # not the main thread
            previous = None
        try:
            return fn(*args, **kwargs)
        except RnncError as err:
            if _state["debug"]:
                raise
            fail(err)
        except MemoryError as err:  # NumPy's _ArrayMemoryError names the array's size
            if _state["debug"]:
                raise
            detail = str(err).strip() or "a memory allocation failed"
            fail(RnncError(f"out of memory: {detail}", None,
                           "`rnnc check SPEC` prints every parameter's shape; a smaller hidden "
                           "size, batch or window needs less"))
        except KeyboardInterrupt as err:
            terminated = isinstance(err, Terminated)
            typer.echo("terminated" if terminated else "interrupted", err=True)
            raise typer.Exit(143 if terminated else 130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def file_in_the_way(folder: Path) -> Path | None:
    """The file (not a folder) at ``folder`` or at one of its parents, if any: what makes
    creating the folder fail with 'File exists' or 'Not a directory'."""
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def umask() -> int:
    """The process's umask: from /proc on Linux, else by setting it and straight back
    (which other threads could see for that moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The permissions a file written over ``path`` gets: those of the file it replaces,
    else what the umask gives a new file (the temporary files written and renamed into
    place start as 0600, readable by their owner only)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~umask()


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file via a temporary file and a rename: never a half-written file.

    A path that names a device, FIFO or socket (``-o /dev/null``, ``-o /dev/stdout``) is
    written to, not replaced by a regular file (the rename did that, as root even to
    /dev/null); a symbolic link to a file keeps the link and replaces the file it names."""
    path = Path(path)
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        st = path.stat()  # through links
    except (OSError, ValueError):
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as err:
            raise RnncError(f"cannot write '{path}': {err.strerror or err}", None,
                            "give the path of a file to write") from None
        return
    if st is not None and path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise RnncError(f"cannot write '{path}': it is a folder", None,
                        "give the path of a file to write")
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise RnncError(f"cannot write '{path}': '{blocker}' is a file, not a folder", None,
                        "give a path in a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise RnncError(f"cannot write '{path}': {err.strerror}", None,
                 "check that the folder exists and is writable") from None
    try:
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
            with contextlib.suppress(OSError):  # a file system without permissions
                os.fchmod(fd, new_file_mode(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RnncError(f"cannot write '{path}': {err.strerror or err}", None,
                            "check the free disk space and the folder's permissions") from None
        raise


SpecArg = Annotated[Path, typer.Argument(help="A spec file (.yaml or .rnn).")]


@app.command()
@handles_errors
def check(
    spec: SpecArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Validate a spec and print a summary: layers, states, parameters and their count."""
    from rnnc.compiler import build
    from rnnc.spec import load_spec
    from rnnc.summary import summary, summary_text

    try:
        parsed = load_spec(spec)
        if parsed.train is None:
            program = build(parsed, base_dir=spec.parent)
        else:
            # what `rnnc train` refuses before training is refused here too: the sizes
            # the dataset implies, the early_stop metric, the sample line
            from rnnc.ir.lower import Sizes, validate
            from rnnc.train.driver import build_data, check_plan

            _, train_cfg = validate(parsed)
            ds = build_data(parsed, train_cfg, spec.parent)
            program = build(parsed, Sizes(ds.n_in, ds.n_out, ds.task, ds.input),
                            base_dir=spec.parent)
            check_plan(parsed, program, ds, train_cfg)
    except RnncError as err:
        if as_json:
            typer.echo(json.dumps({"ok": False, "error": err.to_dict()}, indent=2))
            raise typer.Exit(1) from None
        raise
    if as_json:
        typer.echo(json.dumps({"ok": True, **summary(program)}, indent=2))
    else:
        typer.echo(summary_text(program))


_PASSES = ("fold_constants, cse, fuse_gates, reassociate, fuse_biases, hoist_inputs, dce "
           "(in this order)")


@app.command()
@handles_errors
def ir(
    spec: SpecArg,
    after: Annotated[str | None, typer.Option(
        help=f"Show the IR after this pass: {_PASSES}; or autodiff: the whole pipeline, then "
        "each layer's backward IR.")] = None,
    disable: Annotated[list[str] | None, typer.Option(
        help=f"Turn a pass off (repeatable): {_PASSES}.")] = None,
    raw: Annotated[bool, typer.Option(help="The IR as lowered, before any pass.")] = False,
) -> None:
    """Print the IR (after the whole pass pipeline, or after --after PASS)."""
    from rnnc.compiler import optimize
    from rnnc.ir.lower import lower
    from rnnc.ir.passes import PIPELINE
    from rnnc.ir.printer import program_str
    from rnnc.spec import load_spec

    if raw and (after is not None or disable):
        raise RnncError("--raw is the IR before any pass: it does not go with "
                        f"{'--after' if after is not None else '--disable'}", None,
                        "leave out --raw, or the other option")
    if after is not None and after in (disable or ()):
        raise RnncError(f"--after {after} shows the IR after that pass, which --disable "
                        "turns off", None, "leave out one of them")
    if after is not None and after != "autodiff" and after not in PIPELINE:
        # --after also takes autodiff, which the pipeline's own refusal does not offer
        from rnnc.errors import did_you_mean

        raise RnncError(f"unknown pass '{after}'", None,
                        did_you_mean(after, [*PIPELINE, "autodiff"]))
    program = lower(load_spec(spec), base_dir=str(spec.parent))
    if raw:
        program = optimize(program, disable=PIPELINE)
    elif after == "autodiff":
        program = optimize(program, disable=disable or ())
    else:
        program = optimize(program, disable=disable or (), until=after)
    typer.echo(program_str(program), nl=False)
    if after == "autodiff" and not raw:
        from rnnc.ir.passes.autodiff import autodiff, grad_str, verify_grad

        for layer in program.model.layers:
            text = grad_str(verify_grad(autodiff(layer.cell)))
            typer.echo(f"backward of layer {layer.name}\n"
                       + "\n".join("  " + ln for ln in text.splitlines()))


@app.command()
@handles_errors
def fmt(
    spec: SpecArg,
    to: Annotated[str | None, typer.Option(help="Output syntax: yaml or rnn (default: same).")
                  ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file.")
                      ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", "-i", help="Rewrite SPEC.")] = False,
) -> None:
    """Print a spec in canonical form, in either syntax (YAML <-> rnn)."""
    from rnnc.errors import SpecError
    from rnnc.spec import SYNTAXES, load_spec
    from rnnc.spec.printer import to_text, to_yaml

    parsed = load_spec(spec)
    own = SYNTAXES.get(spec.suffix.lower(), "yaml")
    target = to or own
    if target not in ("yaml", "rnn"):
        raise SpecError(f"unknown syntax '{target}'", None, "use --to yaml or --to rnn")
    if in_place and output is not None:
        raise SpecError("--in-place rewrites SPEC: it does not go with -o", None,
                        "give one of them")
    if in_place and target != own:  # YAML in a .rnn file no longer loads
        raise SpecError(f"--in-place keeps {spec.name} in its own syntax ({own}), not --to "
                        f"{target}", None, f"write the {target} form to a file of its own: "
                        f"-o {spec.with_suffix('.' + target).name}")
    text = to_yaml(parsed) if target == "yaml" else to_text(parsed)
    dest = spec if in_place else output
    if dest is not None and own == "yaml" and _same_file(dest, spec):
        comments = _yaml_comments(spec.read_text(encoding="utf-8"))
        if comments:  # the YAML printer has nowhere to put them
            raise SpecError(f"rewriting {spec.name} would drop its {comments} comment "
                            f"line{'s' if comments > 1 else ''}: the canonical YAML form "
                            "keeps no comments", None,
                            "print it (rnnc fmt SPEC) or write it to another file with -o")
    dropped = 0
    if own == "yaml":  # rnnc reads no YAML comments, so no output keeps them
        dropped = _yaml_comments(parsed.source.text if parsed.source is not None else "")
    elif target == "yaml":  # the YAML printer has nowhere to put a .rnn file's comments
        dropped = len({line for line, _, _ in parsed.comments})
    if dest is not None:
        write_atomic(dest, text)
    else:
        typer.echo(text, nl=False)
    if dropped:
        typer.echo(f"warning: {dropped} comment line{'s' if dropped > 1 else ''} of "
                   f"{spec.name} {'are' if dropped > 1 else 'is'} dropped: the {target} form "
                   f"of a {own} spec keeps no comments", err=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and a.samefile(b))
    except OSError:
        return False


def _yaml_comments(text: str) -> int:
    """How many lines of a YAML text hold a comment (a ``#`` outside every scalar)."""
    import yaml

    scalars = []
    try:
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(tok, yaml.ScalarToken):
                scalars.append((tok.start_mark.index, tok.end_mark.index))
    except yaml.YAMLError:
        return 0
    lines = set()
    for i, ch in enumerate(text):
        if ch == "#" and (i == 0 or text[i - 1] in " \t\r\n") and \
                not any(a <= i < b for a, b in scalars):
            lines.add(text.count("\n", 0, i))
    return len(lines)


@app.command()
@handles_errors
def compile(  # noqa: A001 - the command is called compile
    spec: SpecArg,
    backend: Annotated[str, typer.Option("--backend", "-b", help="numpy or jax (or a plugin).")
                       ] = "numpy",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Module file to write.")
                      ] = None,
    disable: Annotated[list[str] | None, typer.Option(help="Turn a pass off (repeatable).")
                       ] = None,
) -> None:
    """Compile a spec to a standalone Python module."""
    from rnnc.compiler import compile_file

    source = compile_file(spec, backend=backend, disable=disable or ())
    if output is None:
        typer.echo(source, nl=False)
    else:
        write_atomic(output, source)
        typer.echo(f"wrote {output} ({backend} backend)", err=True)


GRADCHECK_MAX = 1000
"""The most --steps and --batch of `rnnc gradcheck` (finite differences over float64
batches of a few steps; 1000 already takes minutes, 10**20 would never end)."""


@app.command()
@handles_errors
def gradcheck(
    spec: SpecArg,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="numpy or jax (or a plugin).")
    ] = "numpy",
    tol: Annotated[float, typer.Option(help="Largest relative error accepted.")] = 1e-6,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            max=GRADCHECK_MAX,
            help="Time steps of the random batch (default: 5, or enough for two of the "
            f"spec's truncated-BPTT windows, up to 64; at most {GRADCHECK_MAX}).",
        ),
    ] = None,
    batch: Annotated[int, typer.Option(
        "--batch", min=1, max=GRADCHECK_MAX,
        help=f"Rows of the random batch (at most {GRADCHECK_MAX}).")] = 3,
    unscored: Annotated[float, typer.Option(
        "--unscored",
        help="Fraction (0 to below 1) of the random batch's class targets made -1, not "
        "scored (a softmax head only).")] = 0.0,
) -> None:
    """Compare a backend's gradients with central finite differences (float64, small sizes)."""
    from rnnc.gradcheck import check_unscored, gradcheck_spec

    if not 0 < tol < float("inf"):  # also refuses NaN
        raise RnncError(f"--tol must be a finite number > 0, not {tol}", None, "e.g. --tol 1e-6")
    check_unscored(unscored)  # the fraction, before the spec is read
    report = gradcheck_spec(spec, backend=backend, tol=tol, T=steps, B=batch,
                            unscored=unscored)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the YAML spec form (for editors)."""
    from rnnc.spec.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def _register_training() -> None:
    from rnnc.train.commands import register

    register(app)


_register_training()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside a command
        print("interrupted", file=sys.stderr)
        sys.exit(130)
