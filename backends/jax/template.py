"""Model-independent code of generated JAX modules.

The emitter (``emitter.py``) pastes the sections of this file that follow a
``# --- section: NAME ---`` marker into every generated module, next to the
model-specific code it writes itself (constants, cell step functions,
``_encode``, ``_layers``, the head). Keeping this code in a real module means
ruff lints and formats it like any other file, and the generated modules stay
ruff-clean by construction.

Everything above the first marker only exists so that this file is valid on its
own: stand-ins for the names every generated module defines. Sections that are
alternatives define the same function (hence F811 is off for this file).
"""

# ruff: noqa: F811

import functools
import gc

import jax
import jax.extend.backend
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


# Stand-ins for the module-specific definitions the emitter writes (never pasted).
DTYPE = "float32"
PARAM_SHAPES: dict = {}
PARAM_INITS: dict = {}
STATE_SHAPES: dict = {}
INPUT_SIZE = 1
DROPOUT: dict = {}
UNROLL: dict = {}
FEATURE_MAJOR: dict = {}
K1 = K2 = 1
REVERSED_STATES: tuple = ()
UPDATER: dict = {"name": "sgd"}
SCHEDULE = None
CLIP = None
L1 = L2 = 0.0
_LAZY: tuple = ()
BIDIRECTIONAL = False
LAYERS: dict = {}
CELLS: dict = {}
MODEL: dict = {}


def _encode(params, xs, dtype):
    raise NotImplementedError


def _encode_for_training(params, xs, dtype):
    raise NotImplementedError


def _layers(params, x, state, valid, resets, drop, detach_every=None, collect=False, vjp=False):
    raise NotImplementedError


def _layers_step(params, x, state):
    raise NotImplementedError


def _check_inputs(xs, ys=None, state=None, lengths=None, resets=None, ids=False, step=False):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _check_params(params):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _check_targets(ys):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _check_opt_state(opt_state):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _seeded(seed):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _float_dtype(dtype, fn):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _check_batch(batch):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _check_ids(arg, what, ids, n, unscored=False):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _predict(params, h):
    raise NotImplementedError


def _losses(params, h, y):
    raise NotImplementedError


def _targets(ys, T):
    raise NotImplementedError


def _readout(params, top, lengths):
    raise NotImplementedError


def _loss_weights(lengths, T, B):
    raise NotImplementedError


def _scored(ys):
    raise NotImplementedError


def _window_objective(params, enc, ys, state, valid, resets, drop, lengths):
    raise NotImplementedError


def _runtime_init_opt_state(params, updater):
    raise NotImplementedError


def learning_rate(step, updater, schedule=None):
    raise NotImplementedError


def clip_gradients(grads, clip):
    raise NotImplementedError


def regularize(grads, params, l1, l2, exclude=None):
    raise NotImplementedError


def apply_updates(params, grads, opt_state, updater, schedule=None):
    raise NotImplementedError


# --- section: init ---
def _init_array(rng, kind, args, shape, fan_in, fan_out):
    """One parameter drawn on the host with NumPy (float64), by its initialiser."""
    if kind == "xavier_uniform":
        a = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, size=shape)
    if kind == "xavier_normal":
        return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=shape)
    if kind == "orthogonal":
        m, n = shape[0], int(np.prod(shape[1:]))
        q, r = np.linalg.qr(rng.normal(0.0, 1.0, size=(max(m, n), min(m, n))))
        q = q * np.sign(np.diag(r))
        return (q.T if m < n else q).reshape(shape)
    if kind == "uniform":
        return rng.uniform(args[0], args[1], size=shape)
    if kind == "normal":
        return rng.normal(0.0, args[0], size=shape)
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "ones":
        return np.ones(shape)
    if kind == "constant":
        return np.full(shape, args[0])
    raise ValueError(f"unknown initialiser {kind!r}")


def init_params(seed=0, dtype=DTYPE):
    """Fresh parameters {name: array}, drawn in PARAM_SHAPES order from one NumPy generator.

    Values are drawn on the host (so they equal the NumPy backend's for the same seed),
    then converted to `dtype` JAX arrays.
    """
    rng = _seeded(seed)
    dtype = _float_dtype(dtype, "init_params")
    params = {}
    for name, shape in PARAM_SHAPES.items():
        kind, args, fan_in, fan_out = PARAM_INITS[name]
        value = _init_array(rng, kind, args, shape, fan_in, fan_out)
        params[name] = jnp.asarray(value, dtype=dtype)
    return params


def initial_state(batch, dtype=DTYPE):
    """The zero state {"<layer>.<state>": (batch, size)}."""
    _check_batch(batch)
    dtype = _float_dtype(dtype, "initial_state")
    return {name: jnp.zeros((batch,) + shape, dtype=dtype) for name, shape in STATE_SHAPES.items()}


def _floating(dtype):
    """Whether `dtype` is a floating-point type (the params' and the state's)."""
    return jnp.issubdtype(dtype, jnp.floating)


def _as_dtype(dtype):
    """`dtype` (a name or a type) as a jnp.dtype; a TypeError for what is none."""
    return jnp.dtype(dtype)


def _state_in(state, batch, dtype):
    """The state a call starts from, in the computation dtype (the params'): the zero
    state when None, else each STATE_SHAPES entry of `state` converted."""
    if state is None:
        return initial_state(batch, dtype)
    return {name: jnp.asarray(state[name], dtype) for name in STATE_SHAPES}


# --- section: run ---
def _dropout_masks(rng, T, B, dtype):
    """Inverted-dropout multipliers mask / (1 - rate), mask ~ Bernoulli(1 - rate).

    One time-major (T, B, width) array per place (input, a layer's output, output),
    drawn fresh for each (time, batch, feature) element.
    """
    masks = {}
    for i, (place, (rate, width)) in enumerate(DROPOUT.items()):
        keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - rate, (T, B, width))
        masks[place] = keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)
    return masks


def _dropout(x, drop, place):
    """x times the dropout multipliers of `place` (unchanged when not training)."""
    if drop is None or place not in drop:
        return x
    return _dense(x) * drop[place]


def _valid(lengths, T):
    """(T, B) bools, true where t < lengths[b]; None when every step is valid."""
    if lengths is None:
        return None
    return jnp.arange(T)[:, None] < lengths[None, :]


def _run_direction(
    cell, params, prefix, xs, state, valid, resets, reverse, detach_every, collect=False, vjp=False
):
    """Run one direction of a layer over time-major inputs xs (T, B, n) with lax.scan.

    Before step t, rows with resets[t] get a zero state, and with detach_every = k the
    state entering each k-step window is a constant for gradients (truncated BPTT, see
    _cut). Rows with valid[t] false keep their state. A reverse direction runs
    t = T-1 ... 0 and stores each output at its own t. Returns (outputs (T, B, m), final
    state and, with `collect`, the state after every step (T, B, size)), states keyed
    "<prefix><name>".
    With `vjp`, cells with a "vjp" entry are differentiated by their whole-sequence
    custom VJP (the training objectives); without it (forward, gate plots) the plain scan
    runs, which every JAX transformation (jax.jvp, jax.hessian) can differentiate.
    """
    p = {name: params[prefix + name] for name in cell["params"]}
    carry0 = tuple(state[prefix + name] for name in cell["states"])
    names = [prefix + name for name in cell["states"]]
    batch = carry0[0].shape[0]
    args = (p, xs, carry0, valid, resets)
    if vjp and cell.get("vjp") is not None and not collect:

        def sequence(feature_major):
            seq = _vjp_sequence(cell, feature_major)
            return lambda *a: seq(*a, reverse, detach_every)

        if _feature_major(cell["vjp"], batch) is None:
            ys, final = sequence(False)(*args)
        else:
            ys, final = _by_platform(args, sequence(True), sequence(False))
        return ys, dict(zip(names, final, strict=True)), {}
    fm = cell.get("vjp") is not None and _feature_major(cell["vjp"], batch, False) is not None
    if fm and not collect and detach_every is None:

        def feature_major(*a):  # the feature-major step, as a plain (differentiable) scan
            return _vjp_sequence(cell, True).run(*a, reverse)[:2]

        def batch_major(p, xs, carry0, valid, resets):
            return _scan_direction(cell, p, _dense(xs), carry0, valid, resets, reverse, None, False)

        ys, final = _by_platform(args, feature_major, batch_major)
        return ys, dict(zip(names, final, strict=True)), {}
    xs = _dense(xs)
    out, final = _scan_direction(cell, p, xs, carry0, valid, resets, reverse, detach_every, collect)
    final = dict(zip(names, final, strict=True))
    if not collect:
        return out, final, {}
    ys, seq = out
    return ys, final, dict(zip(names, seq, strict=True))


def _scan_direction(cell, p, xs, carry0, valid, resets, reverse, detach_every, collect):
    """_run_direction's lax.scan over the cell's step: (outputs, final state tuple)."""
    inv = cell["invariant"](p) if cell["invariant"] is not None else {}
    hx = cell["hoisted"](p, inv, xs) if cell["hoisted"] is not None else {}
    x_seq = xs if cell["reads_x"] else None
    T = xs.shape[0]

    def body(carry, inputs):
        t, x_t, hx_t, valid_t, reset_t = inputs
        if reset_t is not None:
            carry = tuple(jnp.where(reset_t[:, None], jnp.zeros_like(v), v) for v in carry)
        if detach_every is not None:
            cut = _cut(t, T, detach_every, reverse)
            carry = tuple(jnp.where(cut, jax.lax.stop_gradient(v), v) for v in carry)
        y, new = cell["step"](p, inv, hx_t, x_t, *carry)
        if valid_t is not None:
            new = tuple(jnp.where(valid_t[:, None], n, v) for n, v in zip(new, carry, strict=True))
        return new, ((y, new) if collect else y)

    steps = jnp.arange(T)
    final, out = jax.lax.scan(
        body,
        carry0,
        (steps, x_seq, hx, valid, resets),
        reverse=reverse,
        unroll=UNROLL.get(jax.default_backend(), 1),
    )
    return out, final


def _cut(t, T, k, reverse):
    """Whether the state entering step t (of T) is a truncated-BPTT cut, windows of k
    steps [0, k), [k, 2k), ...: a forward direction enters a window at its first step
    (t = k, 2k, ...), a backward one at its last (t = k - 1, 2k - 1, ... before T - 1)."""
    if reverse:
        return ((t + 1) % k == 0) & (t + 1 < T)
    return (t % k == 0) & (t > 0)


def _dense(x):
    """x itself, or the array a lazy input (_Tokens, _Rows) stands for."""
    return x.dense() if isinstance(x, _LAZY) else x


_VJP_SEQUENCES = {}
# How many devices train_step(mesh=...) splits the batch over while it traces: the loops
# run per device, so their layout is chosen from the per-device batch.
_BATCH_SPLIT = [1]


def _feature_major(v, batch, training=True):
    """The cell's feature-major entry (v["feature_major"]) where the module has one and
    the batch allows it, else None: for the training objectives, the batch (per device,
    under train_step's mesh) must be at most its "train_max_batch" (0: forward only;
    None: any batch). Whether the platform asks for it is _by_platform's part."""
    fm = v.get("feature_major")
    if fm is None:
        return None
    limit = fm["train_max_batch"]
    if training and limit is not None and -(-batch // _BATCH_SPLIT[0]) > limit:
        return None
    return fm


# The names jax.lax.platform_dependent knows a FEATURE_MAJOR platform by.
_PLATFORM_NAMES = {"gpu": ("cuda", "rocm")}


def _platforms():
    """The platforms this process computes on, as FEATURE_MAJOR names them ("cpu",
    "gpu", "tpu"): jax.extend.backend.backends(), a CUDA or ROCm backend as "gpu"."""
    names = set()
    for key, backend in jax.extend.backend.backends().items():
        for name in (key, getattr(backend, "platform", key)):
            names.add("gpu" if name in ("cuda", "rocm") else name)
    return frozenset(names)


def _by_platform(args, feature_major, batch_major):
    """feature_major(*args) on a platform FEATURE_MAJOR asks the feature-major loops for,
    batch_major(*args) on the others (each returns the same shapes).

    The platform is the one the computation runs on: that of its arrays, or of the mesh,
    known when the traced program is lowered for it (jax.lax.platform_dependent), not
    while it traces (a trace does not see where its arrays are; jax.default_backend() is
    only where uncommitted ones go: a train step on CPU-committed parameters on a GPU
    host ran the GPU's batch-major loops). Where every platform this process has makes
    the same choice (a host with a CPU only, the usual case), that choice is made here
    and one layout is traced; else both are, and the lowering keeps its platform's.
    """
    choices = {FEATURE_MAJOR.get(name, False) for name in _platforms()}

    def scoped(*a):  # named in the program (profiles; the op names of its HLO)
        with jax.named_scope("feature_major_loops"):
            return feature_major(*a)

    if choices == {True}:
        return scoped(*args)
    if True not in choices:
        return batch_major(*args)
    branches = {}
    for key, yes in FEATURE_MAJOR.items():
        for name in _PLATFORM_NAMES.get(key, (key,)):
            branches[name] = scoped if yes else batch_major
    return jax.lax.platform_dependent(*args, **branches, default=batch_major)


class _Layout:
    """How the custom VJP's loops hold batched values: (B, n), or feature-major (n, B).

    lay(a): a (B, n) value (a state, its adjoint) in the loop's layout (and back);
    col(m): a (B,) mask broadcast against such values; scanned(a): what lax.scan slices
    of a (T, B, n) time-indexed value (a lazy one's token ids); reader(a): a function
    from that slice to the value at the step, (B, n) or (n, B). Both run outside the
    loop: dense values are swapped once there, and a transpose inside the loop would
    slow every fusion that reads it.
    """

    def __init__(self, fm):
        self.fm = bool(fm)

    def lay(self, a):
        return a.T if self.fm else a

    def col(self, m):
        return m[None, :] if self.fm else m[:, None]

    def scanned(self, value):
        if isinstance(value, _LAZY):
            return value.ids
        return jnp.swapaxes(value, 1, 2) if self.fm else value

    def reader(self, value):
        if not isinstance(value, _LAZY):
            return lambda sliced: sliced
        return value.column_reader() if self.fm else value.at


def _vjp_sequence(cell, feature_major=False):
    """The cell's run over a whole sequence as a jax.custom_vjp (built once per cell and
    layout: its loops feature-major, from the cell's "feature_major" entry, or not).

    seq(p, xs, carry0, valid, resets, reverse, detach_every) -> (outputs, final state).
    Its forward pass saves only what the cell's backward step reads; its backward pass
    is the generated BPTT (vjp["backward_step"] in a reverse lax.scan), with each weight
    gradient one matmul over all the steps after the loop (vjp["backward_hoisted"]).
    """
    v = cell["vjp"]
    key = (v["step"], feature_major)
    if key in _VJP_SEQUENCES:
        return _VJP_SEQUENCES[key]
    fm = v["feature_major"] if feature_major else None
    layout = _Layout(fm)

    def run(p, xs, carry0, valid, resets, reverse):
        k = v["prepare"](p, xs)
        step = (fm or v)["step"]

        read = {name: layout.reader(k[name]) for name in v["time"]}

        def body(carry, inputs):
            kt, valid_t, reset_t = inputs
            kt = {name: read[name](a) for name, a in kt.items()}
            if reset_t is not None:
                carry = tuple(jnp.where(layout.col(reset_t), jnp.zeros_like(c), c) for c in carry)
            new, y, saved = step(k, kt, *carry)
            if valid_t is not None:
                keep = layout.col(valid_t)
                new = [jnp.where(keep, n, c) for n, c in zip(new, carry, strict=True)]
            return tuple(new), (y, tuple(saved))

        kts = {name: layout.scanned(k[name]) for name in v["time"]}
        unroll = UNROLL.get(jax.default_backend(), 1)
        carry0 = tuple(layout.lay(c) for c in carry0)
        final, (ys, saved) = jax.lax.scan(  # length: a cell may read no input at all
            body,
            carry0,
            (kts, valid, resets),
            length=xs.shape[0],
            reverse=reverse,
            unroll=unroll,
        )
        if fm:  # (T, m, B) -> (T, B, m)
            ys, final = jnp.swapaxes(ys, 1, 2), tuple(c.T for c in final)
        return ys, final, k, saved

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
    def seq(p, xs, carry0, valid, resets, reverse, detach_every):
        xs = _dense(xs)
        out, final = _scan_direction(cell, p, xs, carry0, valid, resets, reverse, None, False)
        return out, final

    def seq_fwd(p, xs, carry0, valid, resets, reverse, detach_every):
        ys, final, k, saved = run(p, xs, carry0, valid, resets, reverse)
        return (ys, final), (k, saved, valid, resets, xs)

    def seq_bwd(reverse, detach_every, residuals, cotangents):
        k, saved, valid, resets, xs = residuals
        dys, dfinal = cotangents
        lazy_x = isinstance(xs, _LAZY)  # token ids: no input adjoint to return
        backward_step = (fm or v)["backward_step"]
        if fm:  # the weights the backward step multiplies transposed, made once
            k = dict(k, **{f"{w}.T": k[w].T for w in fm["transposed"]})

        read = {name: layout.reader(k[name]) for name in v["time"]}

        def body(ds, inputs):
            t, dy, kt, sv, valid_t, reset_t = inputs
            kt = {name: read[name](a) for name, a in kt.items()}
            if valid_t is not None:  # a padded step passed the state through
                skip = [jnp.where(layout.col(valid_t), jnp.zeros_like(d), d) for d in ds]
                ds = [jnp.where(layout.col(valid_t), d, jnp.zeros_like(d)) for d in ds]
            ds, exports = backward_step(k, kt, sv, *ds, dy)
            if valid_t is not None:
                ds = [d + s for d, s in zip(ds, skip, strict=True)]
            if detach_every is not None:  # truncated BPTT: no adjoint crosses the cut
                cut = _cut(t, dys.shape[0], detach_every, reverse)
                ds = [jnp.where(cut, jnp.zeros_like(d), d) for d in ds]
            if reset_t is not None:  # a reset cut the state off from earlier steps
                ds = [jnp.where(layout.col(reset_t), jnp.zeros_like(d), d) for d in ds]
            return tuple(ds), tuple(exports)

        steps = jnp.arange(dys.shape[0])
        kts = {name: layout.scanned(k[name]) for name in v["time"]}
        d0, exports = jax.lax.scan(
            body,
            tuple(layout.lay(d) for d in dfinal),
            (steps, layout.scanned(dys), kts, saved, valid, resets),
            reverse=not reverse,
            unroll=UNROLL.get(jax.default_backend(), 1),
        )
        d0 = tuple(layout.lay(d) for d in d0)
        tape = dict(zip(v["saved"], saved, strict=True))
        tape.update(zip(v["exports"], exports, strict=True))
        if fm:  # (T, n, B) -> (T, B, n), for the stacks backward_hoisted reads
            tape = {name: jnp.swapaxes(a, 1, 2) for name, a in tape.items()}
        for name, (whole, lo, hi) in v["views"].items():
            tape[name] = tape[whole][..., lo:hi]
        acc = {}
        kd = {name: _dense(a) for name, a in k.items()}  # (XLA drops what goes unread)
        dxs = v["backward_hoisted"](kd, tape, 0, dys.shape[0], acc, need_dx=not lazy_x)
        grads = v["backward_invariant"](kd, acc)
        dp = {
            name: grads[name] if name in grads else jnp.zeros_like(kd[name])
            for name in cell["params"]
        }
        return dp, dxs, d0, None, None

    seq.defvjp(seq_fwd, seq_bwd)
    seq.run = run
    _VJP_SEQUENCES[key] = seq
    return seq


class StepParams:
    """Parameters made ready for step(), once (prepare_step): each layer's invariants
    (its fused gate weights and biases) and the transpose of every weight matrix, laid
    out as its own array. A jitted step otherwise rebuilds the invariants and, on CPU,
    transposes and copies every matrix a product reads (x @ W.T, h @ U.T, the head's
    h @ W.T) on every call: a (4H, V) and a (V, H) copy per character at vocabulary V.
    """

    def __init__(self, params, inv, laid):
        self.params, self.inv, self.laid = params, inv, laid

    def view(self):
        """Inside step: the parameters by name, matrices as _Laid, and the invariants."""
        return _StepView(self)


class _Laid:
    """A matrix whose transpose is laid out already: .T is that array (a product
    x @ W.T reads it as it is); used any other way, it is the matrix itself."""

    def __init__(self, a, t):
        self.a, self.t = a, t
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    @property
    def T(self):  # noqa: N802 (the array attribute it stands in for)
        return self.t

    def __getitem__(self, index):
        return self.a[index]

    def __jax_array__(self):
        return self.a


class _StepView(dict):
    """StepParams inside step: a dict of the parameters (matrices as _Laid) whose
    `inv` holds each layer's invariants by prefix ("layer1.")."""

    def __init__(self, sp):
        def laid(key, a):
            return _Laid(a, sp.laid[key]) if key in sp.laid else a

        super().__init__({k: laid(k, a) for k, a in sp.params.items()})
        self.inv = {
            prefix: {k: laid(prefix + k, a) for k, a in inv.items()}
            for prefix, inv in sp.inv.items()
        }


jax.tree_util.register_pytree_node(
    StepParams, lambda s: ((s.params, s.inv, s.laid), None), lambda _, kids: StepParams(*kids)
)


def _step_direction(cell, params, prefix, x, state):
    """One step of one direction of a layer: (output (B, m), next state)."""
    p = {name: params[prefix + name] for name in cell["params"]}
    if isinstance(params, _StepView):  # prepare_step made them
        inv = params.inv[prefix]
    else:
        inv = cell["invariant"](p) if cell["invariant"] is not None else {}
    hx = cell["hoisted"](p, inv, x) if cell["hoisted"] is not None else {}
    carry = tuple(state[prefix + name] for name in cell["states"])
    y, new = cell["step"](p, inv, hx, x, *carry)
    return y, {prefix + name: v for name, v in zip(cell["states"], new, strict=True)}


def _prepare(params, xs, state, lengths, resets, rng):
    """Shared set-up of the entry points: dtype, sizes, state, masks (all time-major)."""
    dtype = params["head.W"].dtype
    B, T = xs.shape[:2]
    state = _state_in(state, B, dtype)
    valid = _valid(lengths, T)
    resets = None if resets is None else jnp.swapaxes(resets, 0, 1).astype(bool)
    drop = None if rng is None else _dropout_masks(rng, T, B, dtype)
    return dtype, B, T, state, valid, resets, drop


# --- section: masked_mean ---
def _masked_mean(losses, counted):
    """The mean of `losses` where `counted` (None: everywhere); 0 where nothing counts.

    A class id -1 is a target that is not scored: the objectives take the mean over the
    counted steps that are also scored. Without lengths they select the plain mean (the
    sum as it was before -1 existed) where every target is scored.
    """
    if counted is None:  # (no step at all, T = 0 or B = 0: loss 0)
        return jnp.sum(losses) / max(losses.size, 1)
    total = jnp.sum(jnp.where(counted, losses, jnp.zeros_like(losses)))
    return total / jnp.maximum(jnp.sum(counted), 1).astype(losses.dtype)


# --- section: objective_per_step ---
def _scan_objective(params, enc, ys, state, valid, resets, drop, lengths, detach_every=None):
    """Mean loss over the valid steps of every row, and the final state."""
    T = enc.shape[0]
    top, final, _ = _layers(params, enc, state, valid, resets, drop, detach_every, vjp=True)
    losses = _losses(params, _dropout(top, drop, "output"), _targets(ys, T))  # (T, B)
    scored = _scored(ys)  # None: every target is scored (a linear head)
    if scored is None:
        return _masked_mean(losses, valid), final
    scored = _targets(scored, T)
    if valid is None:  # the plain mean (its sum as before -1 existed) unless a target is -1
        plain = _masked_mean(losses, None)
        return jnp.where(jnp.all(scored), plain, _masked_mean(losses, scored)), final
    return _masked_mean(losses, valid & scored), final


# --- section: last ---
def _last(top, lengths):
    """Each row's output at its last valid step, t = lengths[b] - 1: (B, n); zeros for a
    row of length 0, which has no last step."""
    if lengths is None:
        return top[-1]
    h = top[jnp.maximum(lengths - 1, 0), jnp.arange(top.shape[1])]
    return jnp.where((lengths > 0)[:, None], h, jnp.zeros_like(h))


# --- section: objective_last ---
def _scan_objective(params, enc, ys, state, valid, resets, drop, lengths, detach_every=None):
    """Mean loss over the rows (each scored at its last valid step; a row of length 0 does
    not count), and the final state."""
    top, final, _ = _layers(params, enc, state, valid, resets, drop, detach_every, vjp=True)
    losses = _losses(params, _last(_dropout(top, drop, "output"), lengths), ys)  # (B,)
    present = None if lengths is None else lengths > 0
    scored = _scored(ys)  # None: every target is scored (a linear head)
    if scored is None:
        return _masked_mean(losses, present), final
    if present is None:  # the plain mean (its sum as before -1 existed) unless a target is -1
        plain = _masked_mean(losses, None)
        return jnp.where(jnp.all(scored), plain, _masked_mean(losses, scored)), final
    return _masked_mean(losses, present & scored), final


# --- section: objective_full ---
def _objective(params, enc, ys, state, valid, resets, drop, lengths):
    """The loss (full BPTT) and the final state."""
    return _scan_objective(params, enc, ys, state, valid, resets, drop, lengths)


# --- section: objective_truncated ---
def _objective(params, enc, ys, state, valid, resets, drop, lengths):
    """The loss with truncated BPTT (K1, K2) and the final state.

    Window j scores the losses at steps [j K1, min((j + 1) K1, T)) and backpropagates
    them through steps [max(0, (j + 1) K1 - K2), (j + 1) K1). When the windows are disjoint and
    tile the sequence (K1 = K2 dividing T) that is one scan whose state is a constant for
    gradients every K1 steps; otherwise the windows run side by side (_window_objective).
    """
    T = enc.shape[0]
    if K1 >= T:  # one window: full BPTT
        return _scan_objective(params, enc, ys, state, valid, resets, drop, lengths)
    if K1 == K2 and T % K1 == 0:
        return _scan_objective(params, enc, ys, state, valid, resets, drop, lengths, K1)
    return _window_objective(params, enc, ys, state, valid, resets, drop, lengths)


# --- section: windows ---
def _windows(T):
    """Truncated-BPTT windows over T steps, as static index arrays.

    Window j scores the losses at steps [lo, e) = [j K1, min((j + 1) K1, T))
    and backpropagates through the K2 steps [(j + 1) K1 - K2, (j + 1) K1)
    (positions outside [0, T) are padding), so with K1 = K2 the state is a
    constant every K1 steps whatever T is; the state entering step
    max(0, (j + 1) K1 - K2) is a constant, unless it is the call's initial state.
    Returns the time index of every window position (W, K2) clipped into [0, T),
    whether it is a real step, whether its loss is scored in this window, and the first
    and last real steps of each window (W,).
    """
    lo = np.arange(0, T, K1)
    ends = lo + K1
    index = ends[:, None] - K2 + np.arange(K2)[None, :]
    real = (index >= 0) & (index < T)
    scored = index >= lo[:, None]
    first = np.maximum(ends - K2, 0)
    last = np.minimum(ends, T) - 1
    return np.clip(index, 0, T - 1), real, scored, first, last


def _window_objective(params, enc, ys, state, valid, resets, drop, lengths):
    """The loss with truncated BPTT by windows that run side by side.

    The sequence runs once without gradients to find the state entering each window (at
    its first step, or at its last for a direction that runs backward in time); then
    every window reruns its K2 steps from that state, all windows at once as extra
    batch rows (row w * B + b is row b of window w). The loss is the mean over the valid
    steps of the whole call, each step scored in exactly one window.
    """
    enc = _dense(enc)
    T, B = enc.shape[:2]
    index, real, scored, first, last = _windows(T)
    W = index.shape[0]
    sg = jax.lax.stop_gradient
    _, final, seq = _layers(sg(params), sg(enc), sg(state), valid, resets, drop, collect=True)

    def fold(a):
        """(T, B, ...) time-major -> (K2, W * B, ...): the steps of every window."""
        a = jnp.swapaxes(a[index], 0, 1)
        return a.reshape((K2, W * B) + a.shape[3:])

    def spread(mask):
        """(W, K2) -> (K2, W * B), the same for every row of a window."""
        return jnp.asarray(np.repeat(mask.T, B, axis=1))

    # the state entering each window: the call's initial state, or a constant (s[t] is
    # the state after step t, which a backward direction's step t - 1 reads)
    start = {}
    for name, s in seq.items():
        if name in REVERSED_STATES:
            entering = jnp.concatenate([sg(s[1:]), state[name][None]], axis=0)[last]
        else:
            entering = jnp.concatenate([state[name][None], sg(s[:-1])], axis=0)[first]
        start[name] = entering.reshape((W * B,) + s.shape[2:])
    w_valid = spread(real) if valid is None else spread(real) & fold(valid)
    w_resets = None if resets is None else spread(real) & fold(resets)
    w_drop = None if drop is None else {k: fold(v) for k, v in drop.items()}
    top, _, _ = _layers(params, fold(enc), start, w_valid, w_resets, w_drop, vjp=True)
    top = _dropout(top, w_drop, "output")
    losses = _losses(params, top, fold(_targets(ys, T)))
    in_window = spread(scored & real)  # each step scored in exactly one window

    def mean(weights):  # over the steps `weights` (T, B) counts, each in its window
        total = jnp.sum(jnp.where(in_window & fold(weights), losses, jnp.zeros_like(losses)))
        return total / jnp.maximum(jnp.sum(weights), 1).astype(losses.dtype)

    weights = _loss_weights(lengths, T, B)  # (T, B): which steps count for the loss
    targets_scored = _scored(ys)  # None: every target is scored (a linear head)
    if targets_scored is None:
        return mean(weights), final
    targets_scored = _targets(targets_scored, T)  # (T, B); a class id -1 is not scored
    if lengths is None:  # the plain mean (its sum as before -1 existed) unless a target is -1
        plain = mean(weights)
        return jnp.where(jnp.all(targets_scored), plain, mean(weights & targets_scored)), final
    return mean(weights & targets_scored), final


# --- section: lazy_tokens ---
class _Tokens:
    """Time-major token ids (T, B) standing for their one-hot vectors (T, B, n).

    The training objectives pass these to the first layer (no input dropout, no input
    gradient asked for): a cell's hoisted product W x of them is _Rows(W.T, ids), which
    the custom VJP's loop reads one step at a time (W.T[ids[t]], a gather that fuses with
    the step's other work) instead of a fresh (T, B, m) array every call. Everywhere else
    _dense gives the one-hot vectors themselves.
    """

    def __init__(self, ids, n, dtype):
        self.ids, self.n, self.dtype = ids, n, dtype

    @property
    def shape(self):
        return self.ids.shape + (self.n,)

    def dense(self):
        return jax.nn.one_hot(self.ids, self.n, dtype=self.dtype)

    def at(self, ids_t):
        return jax.nn.one_hot(ids_t, self.n, dtype=self.dtype)

    def column_reader(self):
        """A function of ids_t giving at(ids_t) transposed, (n, B)."""
        return lambda ids_t: jax.nn.one_hot(ids_t, self.n, dtype=self.dtype, axis=0)

    def times(self, table):
        """These vectors times table (n, m): its rows, taken lazily."""
        return _Rows(table, self.ids)

    def __getitem__(self, t):
        """The vectors at time t (step() of prepare_step's parameters reads them)."""
        return _Tokens(self.ids[t], self.n, self.dtype)

    def __matmul__(self, table):
        """These vectors times table (n, m), at once: its rows (_take_rows)."""
        return _take_rows(table, self.ids)


def _take_rows(table, ids):
    """table[ids], and a zero row where an id is outside [0, n): what its one-hot vector
    (jax.nn.one_hot) times the table gives."""
    ids = jnp.where(ids < 0, table.shape[0], ids)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=0)


class _Rows:
    """table[ids] for time-major ids (T, B): rows of a (n, m) table, taken lazily."""

    def __init__(self, table, ids):
        self.table, self.ids = table, ids

    def dense(self):
        return _take_rows(self.table, self.ids)

    def at(self, ids_t):
        return _take_rows(self.table, ids_t)

    def column_reader(self):
        """A function of ids_t giving at(ids_t) transposed, (m, B), element by element
        from the table's transpose (made here, once): XLA's CPU transpose of a gathered
        (B, m) block inside the loop is several times slower."""
        n, m = self.table.shape
        zero = jnp.zeros((m, 1), self.table.dtype)  # column n: what ids outside [0, n) get
        flat = jnp.concatenate([self.table.T, zero], axis=1).reshape(-1)
        rows = (jnp.arange(m) * (n + 1))[:, None]

        def read(ids_t):
            ids = jnp.where((ids_t < 0) | (ids_t >= n), n, ids_t)
            return flat.at[rows + ids[None, :]].get(mode="promise_in_bounds")

        return read


jax.tree_util.register_pytree_node(
    _Tokens, lambda t: ((t.ids,), (t.n, t.dtype)), lambda aux, kids: _Tokens(kids[0], *aux)
)
jax.tree_util.register_pytree_node(
    _Rows, lambda r: ((r.table, r.ids), None), lambda _, kids: _Rows(*kids)
)
_LAZY = (_Tokens, _Rows)


# --- section: entry ---
def forward(params, xs, state=None, lengths=None, resets=None):
    """Run the model: (outputs, final state); no dropout.

    xs: (B, T) token ids or (B, T, F) features; lengths: (B,) ints or None; resets: (B, T)
    bools or None. Outputs are probabilities (softmax head) or values (linear head),
    (B, T, out) per step or (B, out) for a last-step head.
    """
    _check_host_ids(xs)
    return _forward(params, xs, state, lengths, resets)


@jax.jit
def _forward(params, xs, state, lengths, resets):
    _check_params(params)
    _check_inputs(xs, None, state, lengths, resets)
    dtype, B, T, state, valid, resets, _ = _prepare(params, xs, state, lengths, resets, None)
    enc = _encode_for_training(params, xs, dtype)
    top, final, _ = _layers(params, enc, state, valid, resets, None)
    return _readout(params, top, lengths), final


def loss_and_grad(
    params, xs, ys, state=None, lengths=None, resets=None, rng=None, wrt_inputs=False
):
    """(loss, grads, final state) of the data loss, with the spec's truncated BPTT.

    With `rng` (a jax.random.PRNGKey) dropout is on. grads has the keys of params; with
    wrt_inputs=True also "xs" (gradient w.r.t. the encoded inputs, (B, T, F)) and
    "state/<name>" for each initial-state entry.
    """
    _check_host_ids(xs, ys)
    return _loss_and_grad(params, xs, ys, state, lengths, resets, rng, wrt_inputs=wrt_inputs)


def _check_host_ids(xs, ys=None, step=False):
    """A ValueError for token ids outside 0 .. V-1 in a NumPy `xs` (`x_t` with `step`), or
    class ids of a softmax head outside 0 .. C-1 (or -1: not scored) in a NumPy `ys`, read
    on the host before the jitted call, as the NumPy module does. A jax.Array (or traced)
    argument is not read here, which would cost a device-to-host copy per call: a token id
    out of range there reads as a zero vector, a class id makes the loss NaN (_losses)."""
    inp = MODEL["input"]
    if inp["kind"] != "dense" and isinstance(xs, np.ndarray):
        if np.issubdtype(xs.dtype, np.integer):  # (a float dtype: refused while tracing)
            _check_ids("x_t" if step else "xs", "token ids", xs, inp["vocab"])
    if MODEL["head"]["kind"] == "softmax" and isinstance(ys, np.ndarray):
        if np.issubdtype(ys.dtype, np.integer):
            _check_ids("ys", "class ids", ys, MODEL["head"]["output_size"], unscored=True)


@functools.partial(jax.jit, static_argnames=("wrt_inputs",))
def _loss_and_grad(params, xs, ys, state, lengths, resets, rng, wrt_inputs=False):
    _check_params(params)
    _check_inputs(xs, ys, state, lengths, resets)
    _check_targets(ys)
    _check_rng(rng)
    dtype, B, T, state, valid, resets, drop = _prepare(params, xs, state, lengths, resets, rng)

    def objective(params, state, delta):
        if delta is None:
            enc = _encode_for_training(params, xs, dtype)
        else:
            enc = _encode(params, xs, dtype) + delta
        return _objective(params, enc, ys, state, valid, resets, drop, lengths)

    if not wrt_inputs:
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, final), grads = grad_fn(params, state, None)
        return loss, grads, final
    delta = jnp.zeros((T, B, INPUT_SIZE), dtype)
    grad_fn = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)
    (loss, final), (g_params, g_state, g_delta) = grad_fn(params, state, delta)
    grads = dict(g_params)
    grads["xs"] = jnp.swapaxes(g_delta, 0, 1)
    grads.update({"state/" + name: g for name, g in g_state.items()})
    return loss, grads, final


def _check_rng(rng):
    """A TypeError unless the dropout `rng` is None or a JAX PRNG key (while tracing: an
    int seed arrives as an int32 array, which jax.random would refuse only with dropout)."""
    if rng is None:
        return
    dtype = getattr(rng, "dtype", None)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if rng.ndim == 0:  # one key (not a batch of them)
            return
    elif dtype == np.uint32 and rng.ndim == 1:  # a raw key, jax.random.PRNGKey(seed)
        return
    got = f"dtype {dtype}, shape {tuple(rng.shape)}" if dtype is not None else type(rng).__name__
    raise TypeError(f"rng: expected a JAX PRNG key (jax.random.key(seed)), got {got}")


def _is_bias(name):
    """Biases (symbol b or b_*) get no L1/L2 penalty."""
    symbol = name.rsplit(".", 1)[-1]
    return symbol == "b" or symbol.startswith("b_")


def init_opt_state(params, optimizer=None):
    """Optimizer state for params: the spec's updater, or `optimizer.init(params)` for an
    optax GradientTransformation."""
    _check_params(params)
    if optimizer is not None:
        _check_optimizer(optimizer)
        return optimizer.init(params)
    return _runtime_init_opt_state(params, UPDATER)


def _check_optimizer(optimizer):
    """A TypeError unless `optimizer` looks like an optax GradientTransformation."""
    if not all(callable(getattr(optimizer, fn, None)) for fn in ("init", "update")):
        kind = type(optimizer).__name__
        raise TypeError(f"optimizer: expected an optax GradientTransformation, got a {kind}")


def _train_step(params, opt_state, xs, ys, state, lengths, resets, rng, optimizer):
    if optimizer is None:  # (while tracing, as the checks of loss_and_grad)
        _check_opt_state(opt_state)
    loss, grads, final = _loss_and_grad(params, xs, ys, state, lengths, resets, rng)
    if L1 or L2:
        grads = regularize(grads, params, L1, L2, exclude=_is_bias)
    grads, grad_norm = clip_gradients(grads, CLIP)
    if optimizer is None:
        lr = learning_rate(opt_state["step"], UPDATER, SCHEDULE)
        params, opt_state = apply_updates(params, grads, opt_state, UPDATER, SCHEDULE)
    else:
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = {k: (p + updates[k]).astype(p.dtype) for k, p in params.items()}
        lr = jnp.asarray(jnp.nan, loss.dtype)
    return params, opt_state, final, {"loss": loss, "grad_norm": grad_norm, "lr": lr}


# The jitted training step per platform. On CPU, XLA's LLVM backend runs at -O1: the
# step's ~100 small kernels compiled 5-18% faster than at the default -O3 and the step ran
# as fast (LSTM H=128 and H=512, docs/performance.md). Other platforms keep XLA's
# defaults (not measured there).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
_TRAIN_STEPS = {
    "cpu": jax.jit(
        _train_step, static_argnames=("optimizer",), compiler_options=CPU_COMPILER_OPTIONS
    ),
    "other": jax.jit(_train_step, static_argnames=("optimizer",)),
}


def _jitted_train_step(params, mesh):
    """The jitted _train_step for the platform the call runs on: the mesh's, else that of
    the parameters (the default device for NumPy arrays). Called while the caller traces
    (train_step inside their jit or scan), the plain one: their compile covers it."""
    first = next(iter(params.values()), None)
    if isinstance(first, jax.core.Tracer):
        return _TRAIN_STEPS["other"]
    if mesh is not None:
        platform = mesh.devices.flat[0].platform
    else:
        on = first.devices() if isinstance(first, jax.Array) else None
        platform = next(iter(on)).platform if on else jax.default_backend()
    return _TRAIN_STEPS["cpu" if platform == "cpu" else "other"]


def train_step(
    params,
    opt_state,
    xs,
    ys,
    state=None,
    lengths=None,
    resets=None,
    rng=None,
    optimizer=None,
    mesh=None,
):
    """One training update: (params, opt_state, final state, metrics).

    Loss and gradients as loss_and_grad, then the L1/L2 gradients (not for biases), then
    clipping (by value, then by global norm), then the spec's updater with its
    learning-rate schedule, or `optimizer` (an optax GradientTransformation whose state
    comes from init_opt_state(params, optimizer); metrics["lr"] is then nan). metrics =
    {"loss", "grad_norm" (before clipping), "lr"}.

    With a `mesh` (see make_mesh) the batch is split over its "data" axis and parameters
    and optimizer state are replicated: data-parallel training, XLA sums the gradients.
    """
    if not hasattr(params, "values"):  # (the rest of params is checked while tracing)
        _check_params(params)
    _check_host_ids(xs, ys)
    if optimizer is not None:
        _check_optimizer(optimizer)
    if mesh is not None:
        if not isinstance(mesh, Mesh) or "data" not in mesh.shape:
            raise TypeError(f"mesh: expected make_mesh()'s Mesh, got {mesh!r}")
        params, opt_state, rng = replicate(mesh, (params, opt_state, rng))
        xs, ys, lengths, resets = shard_batch(mesh, xs, ys, lengths, resets)
        if state is not None:
            state = dict(zip(state, shard_batch(mesh, *state.values()), strict=True))
    jitted = _jitted_train_step(params, mesh)
    split = 1 if mesh is None else int(mesh.shape["data"])
    with _full_gc_deferred(), _batch_split(split):
        return jitted(params, opt_state, xs, ys, state, lengths, resets, rng, optimizer)


class _batch_split:
    """_BATCH_SPLIT set to `n` while a train_step call (and its tracing) runs."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.saved = _BATCH_SPLIT[0]
        _BATCH_SPLIT[0] = self.n

    def __exit__(self, *exc):
        _BATCH_SPLIT[0] = self.saved


class _full_gc_deferred:
    """Python's full (generation 2) garbage collections held off while JAX traces.

    The first call for each argument shape traces and lowers the whole training step,
    allocating hundreds of thousands of short-lived objects; each full collection that
    triggers meanwhile walks every long-lived object of the process (JAX, NumPy, the
    user's), about 0.1 s each time on CPU. Young collections still run, and the deferred
    full ones resume when the call returns, so nothing is kept. Once compiled, a call
    allocates little, and this costs two calls to gc.set_threshold.
    """

    HELD = 1 << 30  # a generation-2 threshold never reached

    def __enter__(self):
        self.saved = gc.get_threshold()
        if self.saved[2] == self.HELD:  # already held (a nested or concurrent call)
            self.saved = None
        else:
            gc.set_threshold(self.saved[0], self.saved[1], self.HELD)

    def __exit__(self, *exc):
        if self.saved is not None:
            gc.set_threshold(*self.saved)


# --- section: step ---
def step(params, x_t, state=None):
    """One time step for streaming inference: (y_t, next state); no dropout.

    x_t: (B,) token ids or (B, F) features. y_t: probabilities (softmax head) or values.
    `params` may be what prepare_step(params) gave (faster, the same results).
    """
    _check_host_ids(x_t, step=True)
    return _step(params, x_t, state)


@jax.jit
def _step(params, x_t, state):
    prepared = isinstance(params, StepParams)
    _check_params(params.params if prepared else params)
    _check_inputs(x_t, state=state, step=True)
    if prepared:
        params = params.view()
    dtype = params["head.W"].dtype
    state = _state_in(state, x_t.shape[0], dtype)
    lazy = prepared and _LAZY and not next(iter(CELLS.values()))["reads_x"]
    encode = _encode_for_training if lazy else _encode
    h, state = _layers_step(params, encode(params, x_t[:, None], dtype)[0], state)
    return _predict(params, h), state


@jax.jit
def prepare_step(params):
    """`params` made ready for step(): pass the result in their place, as often as you
    like (sampling: once per parameter set, then one step per character). The results
    are step(params, ...)'s; it holds the parameters and about as much again (the
    invariants and the transposed matrices)."""
    _check_params(params)
    inv, laid = {}, {}
    for layer, cell in CELLS.items():
        prefix = layer + "."
        p = {name: params[prefix + name] for name in cell["params"]}
        inv[prefix] = cell["invariant"](p) if cell["invariant"] is not None else {}
        laid.update({prefix + k: a.T for k, a in inv[prefix].items() if jnp.ndim(a) == 2})
    # every weight matrix a product reads; not an embedding table, which is indexed (and
    # a _Laid in jnp.take fails: JAX no longer converts __jax_array__ objects there)
    laid.update({k: a.T for k, a in params.items() if a.ndim == 2 and k != "input.E"})
    return StepParams(dict(params), inv, laid)


# --- section: mesh ---
def make_mesh(n_devices=None):
    """A 1-D mesh with axis "data" over the first `n_devices` devices (default: all).

    In a multi-host job (after jax.distributed.initialize()) jax.devices() lists every
    process's devices, so the mesh spans all hosts.
    """
    devices = jax.devices()
    if n_devices is not None:
        if isinstance(n_devices, bool) or not isinstance(n_devices, int | np.integer):
            kind = type(n_devices).__name__
            raise TypeError(f"make_mesh: n_devices must be an int or None, got a {kind}")
        if not 1 <= n_devices <= len(devices):
            raise ValueError(
                f"make_mesh: n_devices must be in 1..{len(devices)} (the devices JAX "
                f"sees), got {n_devices}"
            )
        devices = devices[:n_devices]
    return Mesh(np.array(devices), ("data",))


def _put(x, sharding):
    if jax.process_count() > 1 and not isinstance(x, jax.Array):
        # multi-host: each process passes its own slice of the global batch
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.device_put(x, sharding)


def shard_batch(mesh, *arrays):
    """Batch-major arrays split along axis 0 over the mesh's "data" axis (None stays None).

    The batch must be divisible by the number of devices in the mesh.
    """
    n = int(mesh.shape["data"])
    for a in arrays:
        if isinstance(a, list | tuple):  # (device_put would take it for a tree of scalars)
            raise TypeError(f"shard_batch: expected arrays, got a {type(a).__name__}")
    if jax.process_count() == 1:
        for a in arrays:
            if a is not None and (np.ndim(a) == 0 or np.shape(a)[0] % n):
                raise ValueError(
                    f"shard_batch: an array of shape {np.shape(a)}: the batch (axis 0) must "
                    f"be a multiple of the mesh's {n} devices"
                )
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return tuple(None if a is None else _put(a, sharding) for a in arrays)


def replicate(mesh, tree):
    """A copy of every array in `tree` on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
