"""Model-independent code of generated NumPy modules.

The emitter pastes each section that follows a ``# --- section: NAME ---``
marker (up to the next marker) into generated modules, next to the code it
writes for the model (constants, cell step functions, the layer wiring, the
head). Keeping this code in a real module means ruff lints and formats it like
any other file, so generated modules are ruff-clean by construction.

Everything above the first marker only exists so that this file is valid on its
own: stand-ins for the names every generated module defines.
"""

import numpy as np


PARAM_SHAPES: dict = {}
PARAM_INITS: dict = {}
STATE_SHAPES: dict = {}
DTYPE = "float32"


def _seeded(seed):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _float_dtype(dtype, fn):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


def _check_batch(batch):
    raise NotImplementedError  # backends/common.py INPUT_CHECKS


# --- section: init ---
def _init_array(rng, kind, args, shape, fan_in, fan_out):
    """One parameter drawn with NumPy in float64, by its initialiser."""
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
    """Fresh parameters {name: array}, drawn in PARAM_SHAPES order from one NumPy generator."""
    rng = _seeded(seed)
    dtype = _float_dtype(dtype, "init_params")
    params = {}
    for name, shape in PARAM_SHAPES.items():
        kind, args, fan_in, fan_out = PARAM_INITS[name]
        value = _init_array(rng, kind, args, shape, fan_in, fan_out)
        params[name] = np.asarray(value, dtype=dtype)
    return params


def initial_state(batch, dtype=DTYPE):
    """The zero state {"<layer>.<state>": (batch, size)}."""
    _check_batch(batch)
    dtype = _float_dtype(dtype, "initial_state")
    return {name: np.zeros((batch,) + shape, dtype=dtype) for name, shape in STATE_SHAPES.items()}


def _floating(dtype):
    """Whether `dtype` is a floating-point type (the params' and the state's)."""
    return np.issubdtype(dtype, np.floating)


def _as_dtype(dtype):
    """`dtype` (a name or a type) as a np.dtype; a TypeError for what is none."""
    return np.dtype(dtype)


def _state_in(state, batch, dtype):
    """The state a call starts from, in the computation dtype (the params'): the zero
    state when None, else each STATE_SHAPES entry of `state` converted."""
    if state is None:
        return initial_state(batch, dtype)
    return {name: np.asarray(state[name], dtype=dtype) for name in STATE_SHAPES}


# --- section: helpers ---
def _outer(g, v):
    """sum over every leading (time, batch) axis of the outer products g v^T."""
    return g.reshape(-1, g.shape[-1]).T @ v.reshape(-1, v.shape[-1])


def _matmul(a, b):
    """a @ b for a 2-D b; a stacked (T, B, n) a is multiplied as one (T * B, n) matrix."""
    if a.ndim <= 2:
        return a @ b
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))


def _pad(g, before, after):
    """Gradient of a feature slice: g placed back among zeros."""
    return np.pad(g, [(0, 0)] * (g.ndim - 1) + [(before, after)])


def _accumulate(acc, name, value):
    """acc[name] += value, where the first value is stored as it is."""
    acc[name] = value if name not in acc else acc[name] + value


def _sub(params, prefix):
    """The parameters under `prefix` ("layer1.", "layer2.fwd."), keyed by their symbol."""
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def _prefixed(prefix, grads):
    """{symbol: gradient} -> {prefix + symbol: gradient}."""
    return {prefix + k: v for k, v in grads.items()}


def _tape(tapes, name):
    """The tape of one layer direction, or None when nothing is recorded."""
    return None if tapes is None else tapes.setdefault(name, {})


def _masks(B, T, lengths, resets, dtype):
    """Time-major masks from `lengths` (B,) and `resets` (B, T), each None when unused.

    keep (T, B, 1): 0.0 where a row's state is zeroed before step t, else 1.0.
    valid (T, B, 1): False at padded steps (t >= lengths[b]), whose state carries over.
    weight (T, B): 1.0 where a step's loss counts.
    """
    keep = valid = None
    weight = np.ones((T, B), dtype=dtype)
    if resets is not None:
        keep = (~np.asarray(resets, dtype=bool).T[:, :, None]).astype(dtype)
    if lengths is not None:
        lengths = np.asarray(lengths)
        valid = (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
        weight = valid[:, :, 0].astype(dtype)
    return {"keep": keep, "valid": valid, "weight": weight, "lengths": lengths}


def _windows(T, k1, k2):
    """Truncated-BPTT windows as (s, lo, e): the losses at steps lo:e go back through s:e.

    Window j scores the steps lo = j k1 ... e - 1, e = min((j + 1) k1, T), and goes back
    k2 steps from its nominal end (j + 1) k1: s = max(0, (j + 1) k1 - k2). So k1 = k2 gives
    disjoint windows (the state detached every k1 steps). Without k1 (full BPTT) there
    is one window, (0, 0, T).
    """
    if k1 is None or k1 >= T:
        return [(0, 0, T)]
    return [(max(0, lo + k1 - k2), lo, min(lo + k1, T)) for lo in range(0, T, k1)]


def _window_adjoint(dz, s, lo, e):
    """The adjoint of the top outputs at steps s:e for one window: dz at lo:e, zero before."""
    if lo == s:
        return dz[s:e]
    dy = np.zeros_like(dz[s:e])
    dy[lo - s :] = dz[lo:e]
    return dy


def _dropout_mask(rng, rate, shape, dtype):
    """An inverted-dropout multiplier mask / (1 - rate), mask ~ Bernoulli(1 - rate).

    Drawn batch-major (B, T, width), returned time-major (T, B, width).
    """
    keep = rng.random(shape) < 1.0 - rate
    return np.ascontiguousarray((keep / (1.0 - rate)).astype(dtype).transpose(1, 0, 2))


def _is_bias(name):
    """Biases (symbol b or b_*) get no L1/L2 penalty."""
    symbol = name.rsplit(".", 1)[-1]
    return symbol == "b" or symbol.startswith("b_")


def _last_index(T, B, lengths):
    """(t, b, present): index arrays of each row's last valid step, t = lengths[b] - 1, and
    present (B,), False for a row of length 0: it has no last step, reads zeros (t = 0 is
    only a placeholder) and its loss does not count."""
    if lengths is None:
        return np.full(B, T - 1), np.arange(B), np.ones(B, dtype=bool)
    lengths = np.asarray(lengths, dtype=np.int64)  # signed: a uint8 0 - 1 would wrap
    return np.maximum(lengths - 1, 0), np.arange(B), lengths > 0


# --- section: softmax ---
def _log_softmax(logits):
    """log softmax over the last axis, shifted by the maximum for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _head_loss(logits, targets, weight, n):
    """Cross-entropy -log softmax(logits)[y], summed with `weight`, divided by n.

    Returns the loss and its gradient with respect to the logits, (p - onehot(y)) w / n.
    """
    logp = _log_softmax(logits)
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)
    loss = -float(np.sum(picked[..., 0] * weight)) / n
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, targets[..., None], np.exp(picked) - 1.0, axis=-1)
    return loss, dlogits * (weight / n)[..., None]


def _head_output(logits):
    """Probabilities: softmax over the classes."""
    return np.exp(_log_softmax(logits))


# --- section: linear ---
def _head_loss(logits, targets, weight, n):  # noqa: F811
    """Squared error (pred - y)^2 averaged over the outputs, summed with `weight` / n.

    Returns the loss and its gradient with respect to the predictions.
    """
    diff = logits - targets
    per_step = np.mean(diff * diff, axis=-1)
    loss = float(np.sum(per_step * weight)) / n
    return loss, diff * (2.0 / diff.shape[-1]) * (weight / n)[..., None]


def _head_output(logits):  # noqa: F811
    """Values: the linear head is the identity."""
    return logits
