"""What every backend's emitter shares: the pasted sources and the module's constants.

:class:`ModuleEmitterBase` is the base of the built-in emitters. It reads the
backend package's ``template.py`` (by ``# --- section: NAME ---``) and
``runtime_optim.py`` (after its marker line, verbatim), and computes the plain data
of the generated module's constants (``SPEC``, ``PARAM_SHAPES``, ``PARAM_INITS``,
``STATE_SHAPES``, ``MODEL``, ``TRAIN``, ``UPDATER``, ``SCHEDULE``, ``CLIP``) that
``docs/generated-module.md`` specifies. A backend sets ``package`` and overrides
the capability flags and hooks below where its module differs; how the constants
are printed (and everything else) is the backend's own.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from rnnc.errors import BackendError
from rnnc.ir.nodes import Param, Program


RUNTIME_MARKER = "# --- rnnc runtime begins ---"
SECTION = re.compile(r"^# --- section: (\w+) ---$", re.M)


# The argument checks of every generated module's entry points (pasted verbatim): one
# ValueError that names the argument, the shape it needs and the shape it got, before
# any array work (a traceback from inside NumPy or a JAX broadcast otherwise). Shapes
# and the lengths' dtype only, so under jax.jit they run once, while tracing; `ids` (the
# NumPy module) also checks the values, which a traced array cannot show: token ids and
# class ids (integers in range) and lengths (in 0..T). Without `ids` (the JAX module,
# whose entry points are jitted) a list or tuple is one TypeError; NumPy takes lists.
INPUT_CHECKS = '''
def _check_inputs(xs, ys=None, state=None, lengths=None, resets=None, ids=False, step=False):
    """A ValueError for an argument that does not fit the model (docs: "Arrays").

    xs: (B, T) token ids or (B, T, F) features; with `step`, one step: (B,) or (B, F).
    ys: (B, T) or (B,) class ids, (B, T, Y) or (B, Y) values, by the head. state: every
    STATE_SHAPES entry, (B, size). lengths: (B,). resets: (B, T).
    """
    inp, head = MODEL["input"], MODEL["head"]
    if not ids:  # under jax.jit a Python list arrives as a list of traced scalars
        args = (("x_t" if step else "xs", xs), ("ys", ys), ("lengths", lengths), ("resets", resets))
        for arg, value in args:
            if isinstance(value, list | tuple):
                kind = type(value).__name__
                raise TypeError(f"{arg}: expected an array, got a {kind} (pass np.asarray({arg}))")
    shape = tuple(np.shape(xs))
    lead = ("batch",) if step else ("batch", "time")
    if inp["kind"] == "dense":
        want, ok = (*lead, inp["size"]), shape[len(lead) :] == (inp["size"],)
    else:
        want, ok = lead, len(shape) == len(lead)
    if not ok:
        what = "features" if inp["kind"] == "dense" else "token ids"
        arg = "x_t" if step else "xs"
        raise ValueError(f"{arg}: expected {what} of shape {_dims(want)}, got shape {shape}")
    B, T = shape[0], (1 if step else shape[1])
    if T == 0 and head["at"] == "last":
        raise ValueError(f"xs: a last-step head needs at least one time step, got shape {shape}")
    if ids and inp["kind"] != "dense":
        _check_ids("x_t" if step else "xs", "token ids", xs, inp["vocab"])
    elif inp["kind"] != "dense" and not _ids_dtype_ok(inp["kind"], xs.dtype):
        arg = "x_t" if step else "xs"
        raise ValueError(f"{arg}: token ids must be integers, got dtype {xs.dtype}")
    if ys is not None:
        y = () if head["kind"] == "softmax" else (head["output_size"],)
        want = (B, T, *y) if head["at"] == "per_step" else (B, *y)
        if tuple(np.shape(ys)) != want:
            what = "class ids" if head["kind"] == "softmax" else "values"
            raise ValueError(f"ys: expected {what} of shape {want}, got shape {np.shape(ys)}")
        if ids and head["kind"] == "softmax":  # -1: a target that is not scored
            _check_ids("ys", "class ids", ys, head["output_size"], unscored=True)
    for name, value, want in (("lengths", lengths, (B,)), ("resets", resets, (B, T))):
        if value is not None and tuple(np.shape(value)) != want:
            raise ValueError(f"{name}: expected shape {want}, got shape {np.shape(value)}")
    if lengths is not None:
        kind = lengths.dtype if hasattr(lengths, "dtype") else np.asarray(lengths).dtype
        if not np.issubdtype(kind, np.integer):
            raise ValueError(f"lengths: expected integers, got dtype {kind}")
        if ids and np.size(lengths):
            lo, hi = int(np.min(lengths)), int(np.max(lengths))
            if lo < 0 or hi > T:
                raise ValueError(f"lengths: expected values in 0..{T}, got {lo}..{hi}")
    if state is not None:
        if not hasattr(state, "keys"):  # an array would compare its elements with `in`
            kind = type(state).__name__
            raise TypeError(
                f"state: expected a dict {{name: (batch, size) array}} like initial_state(B), "
                f"got a {kind}"
            )
        for name, size in STATE_SHAPES.items():
            if name not in state:
                raise ValueError(f"state: no entry {name!r} (initial_state(B) has them all)")
            if not ids and isinstance(state[name], list | tuple):  # as xs under jax.jit
                kind = type(state[name]).__name__
                raise TypeError(f"state[{name!r}]: expected an array, got a {kind}")
            if tuple(np.shape(state[name])) != (B, *size):
                raise ValueError(
                    f"state[{name!r}]: expected shape {(B, *size)}, "
                    f"got shape {np.shape(state[name])}"
                )


def _ids_dtype_ok(kind, dtype):
    """Token ids are integers; a one-hot input also takes floats, as the dense path does
    (not booleans), a table lookup (embedding) nothing else."""
    if np.issubdtype(dtype, np.integer):
        return True
    return kind == "onehot" and not np.issubdtype(dtype, np.bool_)


def _dims(dims):
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _seeded(seed):
    """np.random.default_rng(seed), or one error naming init_params' seed."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise type(e)(f"init_params: seed must be an int 0 or more, got {seed!r}") from None


def _check_batch(batch):
    """initial_state's batch: a TypeError unless an int, a ValueError if negative."""
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer):
        kind = type(batch).__name__
        raise TypeError(f"initial_state: batch must be an int, got a {kind}")
    if batch < 0:
        raise ValueError(f"initial_state: batch must be 0 or more, got {batch}")


def _float_dtype(dtype, fn):
    """`dtype` as a dtype, or one error naming `fn`'s dtype argument: a TypeError for what
    is no dtype, a ValueError for one that is not floating-point (int32, bool, complex64).
    `_as_dtype` and `_floating` are the backend's (JAX's dtypes include bfloat16)."""
    try:
        kind = None if dtype is None else _as_dtype(dtype)
    except TypeError:
        kind = None
    if kind is None:
        raise TypeError(f"{fn}: dtype must be a float type such as 'float32', got {dtype!r}")
    if not _floating(kind):
        raise ValueError(f"{fn}: dtype must be a float type such as 'float32', got {kind}")
    return kind


def _check_params(params):
    """A TypeError or ValueError unless `params` is what init_params() gives: a dict of
    every PARAM_SHAPES name and no other, each an array of its shape, all of one float
    dtype (the computation's). Shapes and dtypes only: under jax.jit it runs while tracing.
    """
    if not hasattr(params, "keys"):
        kind = type(params).__name__
        raise TypeError(f"params: expected a dict {{name: array}} like init_params(), got a {kind}")
    missing = [name for name in PARAM_SHAPES if name not in params]
    extra = [name for name in params if name not in PARAM_SHAPES]
    if missing or extra:
        parts = [
            f"{what} {', '.join(map(repr, names))}"
            for what, names in (("no entry", missing), ("unknown entry", extra))
            if names
        ]
        hint = "init_params() has every name in PARAM_SHAPES, and no other"
        raise ValueError(f"params: {'; '.join(parts)} ({hint})")
    first = None
    for name, want in PARAM_SHAPES.items():
        value = params[name]
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"params[{name!r}]: expected an array, got a {type(value).__name__}")
        if tuple(value.shape) != tuple(want):
            raise ValueError(
                f"params[{name!r}]: expected shape {tuple(want)}, got shape {tuple(value.shape)}"
            )
        if not _floating(value.dtype):
            raise ValueError(f"params[{name!r}]: expected floats, got dtype {value.dtype}")
        if first is None:
            first = name
        elif value.dtype != params[first].dtype:
            raise ValueError(
                f"params[{name!r}]: expected dtype {params[first].dtype} (that of "
                f"params[{first!r}]: one computation dtype), got dtype {value.dtype}"
            )


def _check_targets(ys):
    """loss_and_grad's `ys` (after _check_inputs): a TypeError for none, a ValueError for
    class ids that are not integers or values that are not numbers (the dtype, which a
    traced array shows too)."""
    if ys is None:
        raise TypeError("ys: expected the targets (docs: Arrays), got None")
    kind = ys.dtype if hasattr(ys, "dtype") else np.asarray(ys).dtype
    if MODEL["head"]["kind"] == "softmax" and not np.issubdtype(kind, np.integer):
        raise ValueError(f"ys: class ids must be integers, got dtype {kind}")
    if kind.kind not in "biuf" and not _floating(kind):  # strings ("0.5" read as 0.5), objects
        raise ValueError(f"ys: expected values (numbers), got dtype {kind}")


def _check_opt_state(opt_state):
    """A TypeError or ValueError unless `opt_state` has init_opt_state(params)'s entries for
    the spec's updater ("step", and one array per parameter and slot, of its shape)."""
    if not hasattr(opt_state, "keys"):
        kind = type(opt_state).__name__
        raise TypeError(f"opt_state: expected the dict init_opt_state(params) gives, got a {kind}")
    slots = {
        f"{slot}/{name}": shape
        for slot in _OPT_SLOTS[UPDATER["name"]]
        for name, shape in PARAM_SHAPES.items()
    }
    missing = [name for name in ("step", *slots) if name not in opt_state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(
            f"opt_state: no entry {missing[0]!r}{more} (init_opt_state(params) has them all, "
            f"for the updater {UPDATER['name']!r})"
        )
    for name, want in slots.items():
        value = opt_state[name]
        got = getattr(value, "shape", None)
        if got is None or tuple(got) != tuple(want):
            got = f"shape {tuple(got)}" if got is not None else f"a {type(value).__name__}"
            raise ValueError(f"opt_state[{name!r}]: expected shape {tuple(want)}, got {got}")


def _check_ids(arg, what, ids, n, unscored=False):
    """A ValueError unless `ids` are integers in 0 .. n-1, or -1 with `unscored` (class
    ids: a target that is not scored); concrete values only."""
    a = np.asarray(ids)
    if not a.size:
        return
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{arg}: {what} must be integers, got dtype {a.dtype}")
    lo, hi = int(a.min()), int(a.max())
    if lo < (-1 if unscored else 0) or hi >= n:
        note = " (or -1: not scored)" if unscored else ""
        raise ValueError(f"{arg}: {what} must be in 0..{n - 1}, got values in {lo}..{hi}{note}")
'''


def step_refusal(model: Any) -> list[str] | None:
    """``step()`` of a model with a layer that runs backward in time (bidirectional, or
    ``direction: backward``), which needs the whole sequence: one NotImplementedError that
    names the first such layer, the same in every backend. None when every layer runs
    forward in time."""
    from .pyfmt import INDENT, docstring, py_str

    layer = next((la for la in model.layers if "bwd" in la.directions), None)
    if layer is None:
        return None
    if layer.bidirectional:
        what, why = "a bidirectional layer", "is bidirectional"
    else:
        what, why = "a layer that runs backward in time", "runs backward in time"
    msg = f"step() runs one time step, but layer {layer.name}"
    return [
        "def step(params, x_t, state=None):",
        *docstring(f"Not available: {what} needs the whole sequence (use forward).", INDENT),
        f"{INDENT}raise NotImplementedError(",
        f"{INDENT * 2}{py_str(msg)}",
        f'{INDENT * 2}" {why} and needs the whole sequence: use forward()"',
        f"{INDENT})",
    ]


def package_text(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def template_sections(package: str) -> dict[str, str]:
    """The ``# --- section: NAME ---`` parts of ``package``'s template.py, by name."""
    parts = SECTION.split(package_text(package, "template.py"))
    return {name: body.strip("\n") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def runtime_source(package: str) -> str:
    """The training-update runtime: ``package``'s runtime_optim.py after its marker, verbatim."""
    text = package_text(package, "runtime_optim.py")
    at = text.find(RUNTIME_MARKER)
    if at < 0:
        raise BackendError(f"{package}/runtime_optim.py has no runtime marker", None)
    return text[at:].strip("\n")


def plain(obj: Any) -> Any:
    """Spec data as plain literals: tuples become lists, dict keys and other objects strings."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


class ModuleEmitterBase:
    """The program, the pasted sources and the constants' data of one generated module."""

    package: str = ""  # the backend package holding template.py and runtime_optim.py
    # CLIP lists only the limits that are set (None when neither is)
    clip_only_set = False

    def __init__(self, program: Program):
        self.program = program
        self.model = program.model
        self.train = program.train

    # -- pasted sources
    def template_sections(self) -> dict[str, str]:
        return template_sections(self.package)

    def runtime_source(self) -> str:
        return runtime_source(self.package)

    # -- constants
    def spec_data(self) -> Any:
        return plain(self.program.spec_data if self.program.spec_data is not None else {})

    def dtype(self) -> str:
        """The spec's ``dtype`` (the generated module's ``DTYPE``, default float32)."""
        if self.train is not None:
            return self.train.dtype
        spec = self.spec_data()
        if isinstance(spec, dict) and isinstance(spec.get("model"), dict):
            return spec["model"].get("dtype", "float32")
        return "float32"

    def param_fans(self, p: Param) -> tuple[Any, Any]:
        """``(fan_in, fan_out)`` of PARAM_INITS (the spec's, else None)."""
        return p.fan if p.fan is not None else (None, None)

    def param_shapes(self) -> dict[str, tuple]:
        return {p.name: tuple(p.shape) for p in self.model.params}

    def param_inits(self) -> dict[str, tuple]:
        """``{name: (initialiser, arguments, fan_in, fan_out)}``."""
        return {p.name: (p.init[0], tuple(float(a) for a in p.init[1]), *self.param_fans(p))
                for p in self.model.params}

    def state_shapes(self) -> dict[str, tuple]:
        return {v.name: (v.size,) for v in self.model.state_vars}

    def model_summary(self) -> dict[str, Any]:
        m = self.model
        enc = {"kind": m.input.kind, "vocab": m.input.vocab, "size": m.input.size,
               "normalize": m.input.normalize}
        layers = []
        for la in m.layers:
            entry: dict[str, Any] = {
                "name": la.name, "cell": la.cell.name, "input_size": la.input_size,
                "hidden": la.cell.output_size, "output_size": la.output_size,
                "states": {v.name: v.size for v in la.cell.states},
                "directions": list(la.directions), "merge": la.merge, "residual": la.residual,
                "dropout": la.dropout,
            }
            layers.append(entry)
        out = {  # the same in every backend (docs/generated-module.md, "Names")
            "name": m.name,
            "input": enc,
            "layers": layers,
            "head": {"kind": m.head.kind, "at": m.head.at, "input_size": m.head.input_size,
                     "output_size": m.head.output_size},
            "stack": m.stack,
            "dropout": {"input": m.input_dropout, "output": m.output_dropout},
            "param_count": m.param_count,
        }
        return out

    def data_summary(self) -> dict[str, Any]:
        """TRAIN's ``data`` entry."""
        name, opts = self.train.data
        return {"name": name, "options": plain(dict(opts))}

    def train_summary(self) -> dict[str, Any] | None:
        t = self.train
        if t is None:
            return None
        return {
            "data": self.data_summary(),
            "bptt": None if t.k1 is None else {"k1": t.k1, "k2": t.k2},
            "updater": self.updater(),
            "schedule": self.schedule(),
            "clip": {"norm": t.clip_norm, "value": t.clip_value},
            "l1": t.l1, "l2": t.l2, "epochs": t.epochs, "batch": t.batch,
            "early_stop": None if t.early_stop is None else {"metric": t.early_stop[0],
                                                             "patience": t.early_stop[1]},
            "seed": t.seed, "reset": t.reset, "dtype": t.dtype,
            "sample_every": t.sample_every, "sample_length": t.sample_length,
            "checkpoint_every": t.checkpoint_every,
        }

    def updater(self) -> dict[str, Any]:
        """UPDATER: ``{"name": ..., **options}`` (adam without a train block)."""
        t = self.train
        return {"name": "adam"} if t is None else {"name": t.updater[0], **dict(t.updater[1])}

    def schedule(self) -> dict[str, Any] | None:
        t = self.train
        if t is None or t.schedule is None:
            return None
        return {"name": t.schedule[0], **dict(t.schedule[1])}

    def clip(self) -> dict[str, Any] | None:
        t = self.train
        if t is None:
            return None
        clip = {"value": t.clip_value, "norm": t.clip_norm}
        if self.clip_only_set:
            return {k: v for k, v in clip.items() if v is not None} or None
        return clip

    def l1_l2(self) -> tuple[float, float]:
        t = self.train
        return (0.0, 0.0) if t is None else (t.l1, t.l2)
