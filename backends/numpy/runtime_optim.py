"""Training-update runtime for generated NumPy modules.

Everything after the "rnnc runtime begins" marker comment is copied verbatim into
every generated NumPy module, so that part may only use ``math`` and ``numpy as np``,
defines functions and small constants only, and has no side effects on import.
``backends/jax/runtime_optim.py`` holds the same functions written in ``jax.numpy``.

One training step, in this order (see the comment block after the marker for details)::

    grads = regularize(grads, params, l1, l2)             # 1. add penalty gradients
    grads, gnorm = clip_gradients(grads, clip)            # 2. clip (value, then global norm)
    params, opt_state = apply_updates(params, grads, opt_state, updater, schedule)  # 3. update
"""

import math

import numpy as np


# --- rnnc runtime begins ---
# Training-update runtime: updaters, learning-rate schedules, clipping, L1/L2.
#
# One training step, in this order:
#   grads = regularize(grads, params, l1, l2)        # 1. add L1/L2 penalty gradients
#   grads, gnorm = clip_gradients(grads, clip)       # 2. clip by value, then by global norm
#   params, opt_state = apply_updates(params, grads, opt_state, updater, schedule)  # 3. update
#
# params and grads are flat dicts name -> array. opt_state is a flat dict of arrays so it
# can be saved next to the parameters: "step" (updates applied so far), "m/<name>" (first
# moment / momentum buffer) and "v/<name>" (second moment / sum of squares), as the updater
# needs. Below, t = step + 1 is the 1-based index of the update being made, g the gradient,
# and lr = learning_rate(step, updater, schedule).
#
#   sgd       p -= lr * g
#   momentum  m = mu*m + g;  p -= lr * m                      (torch SGD, dampening 0)
#   nesterov  m = mu*m + g;  p -= lr * (g + mu*m)             (torch SGD, nesterov=True)
#   adagrad   v += g^2;  p -= lr * g / (sqrt(v) + eps)        (torch Adagrad; v starts at
#                                                              initial_accumulator)
#   rmsprop   v = d*v + (1-d)*g^2;  p -= lr * g / (sqrt(v) + eps)   (torch RMSprop, d=decay)
#   adam      m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
#             p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)    (torch Adam)
#   nadam     m, v as adam;  m_hat = b1*m/(1-b1^(t+1)) + (1-b1)*g/(1-b1^t)
#             p -= lr * m_hat / (sqrt(v / (1-b2^t)) + eps)
#             Dozat (2016) Nesterov-Adam with a constant momentum b1, exactly optax.nadam.
#             torch.optim.NAdam is the same formula only in the limit momentum_decay -> inf
#             (its default momentum_decay=4e-3 warms the momentum up and differs).

UPDATER_DEFAULTS = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.01, "eps": 1e-10, "initial_accumulator": 0.0},
    "rmsprop": {"lr": 0.001, "decay": 0.9, "eps": 1e-8},
    "adam": {"lr": 0.001, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "nadam": {"lr": 0.002, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
}

# Learning-rate schedules; lr0 is the updater's "lr", step counts updates already applied
# (0 for the first update).
#   constant       lr0                                    (also schedule=None)
#   exponential    lr0 * decay^(step / every)             (smooth decay)
#   step           lr0 * factor^floor(step / every)       (staircase decay)
#   cosine         warmup > 0 and step < warmup: lr0 * (step + 1) / warmup
#                  else min_lr + (lr0 - min_lr) * (1 + cos(pi * q)) / 2,
#                  q = min(1, (step - warmup) / (total - warmup))
#   warmup_linear  lr0 * min(1, (step + 1) / warmup)      (linear ramp, then constant)
SCHEDULE_DEFAULTS = {
    "constant": {},
    "exponential": {"decay": 0.97, "every": 100},
    "step": {"factor": 0.5, "every": 1000},
    "cosine": {"total": 10000, "min_lr": 0.0, "warmup": 0},
    "warmup_linear": {"warmup": 100},
}

# Which state slots each updater keeps per parameter.
_OPT_SLOTS = {
    "sgd": (),
    "momentum": ("m",),
    "nesterov": ("m",),
    "adagrad": ("v",),
    "rmsprop": ("v",),
    "adam": ("m", "v"),
    "nadam": ("m", "v"),
}

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
_OPT_CLIP_EPS = 1e-6


def _opt_settings(kind, table, given):
    """Merge a {"name": ..., key: value} dict over the defaults of table[name]."""
    name = given["name"]
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
    unknown = set(given) - set(table[name]) - {"name"}
    if unknown:
        raise ValueError(f"unknown {kind} settings for {name!r}: {sorted(unknown)}")
    return name, {**table[name], **given}


def _opt_is_bias(name):
    """Default regularization exemption, the generated modules' rule: the last name
    component (the parameter's symbol) is "b" or starts with "b_"."""
    symbol = name.replace("/", ".").rsplit(".", 1)[-1]
    return symbol == "b" or symbol.startswith("b_")


def init_opt_state(params, updater):
    """Zero updater state for params: {"step": 0, "m/<name>": ..., "v/<name>": ...}."""
    name, h = _opt_settings("updater", UPDATER_DEFAULTS, updater)
    state = {"step": np.array(0, dtype=np.int64)}
    for slot in _OPT_SLOTS[name]:
        # adagrad's sum of squares may start above zero; everything else starts at zero
        start = h["initial_accumulator"] if slot == "v" and name == "adagrad" else 0.0
        for k, p in params.items():
            state[f"{slot}/{k}"] = np.full_like(p, start)
    return state


def learning_rate(step, updater, schedule=None):
    """Learning rate for the update made after `step` updates (formulas above)."""
    _, h = _opt_settings("updater", UPDATER_DEFAULTS, updater)
    lr0 = float(h["lr"])
    if schedule is None:
        return lr0
    name, s = _opt_settings("schedule", SCHEDULE_DEFAULTS, schedule)
    step = int(step)
    if name == "constant":
        return lr0
    if name == "exponential":
        # smooth exponential decay: a factor `decay` every `every` steps
        return lr0 * s["decay"] ** (step / s["every"])
    if name == "step":
        # staircase: multiply by `factor` once every `every` steps
        return lr0 * s["factor"] ** (step // s["every"])
    if name == "cosine":
        warmup, total, min_lr = s["warmup"], s["total"], s["min_lr"]
        if step < warmup:
            # linear warmup from lr0/warmup up to lr0
            return lr0 * (step + 1) / warmup
        # cosine from lr0 (q=0) down to min_lr (q=1), then flat
        q = min(1.0, (step - warmup) / max(total - warmup, 1))
        return min_lr + (lr0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))
    # warmup_linear: linear ramp over `warmup` steps, then constant
    return lr0 * min(1.0, (step + 1) / max(s["warmup"], 1))


def _opt_global_norm(grads):
    """sqrt of the sum of squares of every element of every gradient."""
    return math.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values()))


def clip_gradients(grads, clip):
    """Clip gradients; returns (clipped grads, global norm of the grads as given).

    clip is None or a dict with "value" (clip each element to [-value, value]) and/or
    "norm" (scale all grads by min(1, norm / (global_norm + 1e-6)), like
    torch.nn.utils.clip_grad_norm_). With both, value clipping comes first. The returned
    norm is that of the incoming grads, before any clipping (the number worth logging).
    """
    norm = _opt_global_norm(grads)
    clip = clip or {}
    out = dict(grads)
    if clip.get("value") is not None:
        # element-wise clip into [-value, value]
        c = float(clip["value"])
        out = {k: np.clip(g, -c, c) for k, g in out.items()}
    if clip.get("norm") is not None:
        # rescale everything together so the global norm is at most clip["norm"]
        current = _opt_global_norm(out) if clip.get("value") is not None else norm
        scale = min(1.0, float(clip["norm"]) / (current + _OPT_CLIP_EPS))
        out = {k: g * scale for k, g in out.items()}
    return out, norm


def regularize(grads, params, l1, l2, exclude=_opt_is_bias):
    """Add the gradient of regularization_loss to grads: l2 * p + l1 * sign(p).

    Parameters for which exclude(name) is true are left alone; by default those are
    biases (last name component "b" or "b_..."). Pass `lambda name: False` to
    regularize every parameter.
    """
    out = dict(grads)
    for k, g in grads.items():
        if exclude(k):
            continue
        p = params[k]
        # d/dp [0.5*l2*p^2 + l1*|p|]  (sign(0) = 0 is the subgradient used at 0)
        out[k] = g + l2 * p + l1 * np.sign(p)
    return out


def regularization_loss(params, l1, l2, exclude=_opt_is_bias):
    """0.5 * l2 * sum(p^2) + l1 * sum(|p|) over the parameters not excluded."""
    total = 0.0
    for k, p in params.items():
        if exclude(k):
            continue
        total += 0.5 * l2 * float(np.sum(np.square(p))) + l1 * float(np.sum(np.abs(p)))
    return total


def _opt_update(name, h, lr, t, p, g, m, v):
    """One update of one parameter; returns (p, m, v) (m, v None when unused)."""
    if name == "sgd":
        return p - lr * g, m, v
    if name in ("momentum", "nesterov"):
        mu = h["momentum"]
        m = mu * m + g  # velocity (heavy ball)
        step = g + mu * m if name == "nesterov" else m  # nesterov looks one step ahead
        return p - lr * step, m, v
    if name == "adagrad":
        v = v + g * g  # running sum of squared gradients
        return p - lr * g / (np.sqrt(v) + h["eps"]), m, v
    if name == "rmsprop":
        d = h["decay"]
        v = d * v + (1.0 - d) * g * g  # moving average of squared gradients
        return p - lr * g / (np.sqrt(v) + h["eps"]), m, v
    # adam and nadam share the moment estimates
    b1, b2 = h["b1"], h["b2"]
    m = b1 * m + (1.0 - b1) * g  # first moment
    v = b2 * v + (1.0 - b2) * g * g  # second moment
    v_hat = v / (1.0 - b2**t)  # bias-corrected second moment
    if name == "adam":
        m_hat = m / (1.0 - b1**t)  # bias-corrected first moment
    else:
        # nesterov: next step's momentum plus this step's gradient, each bias-corrected
        m_hat = b1 * m / (1.0 - b1 ** (t + 1)) + (1.0 - b1) * g / (1.0 - b1**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + h["eps"]), m, v


def apply_updates(params, grads, opt_state, updater, schedule=None):
    """One update of every parameter; returns (new_params, new_opt_state).

    Every parameter needs a gradient. Inputs are not modified.
    """
    name, h = _opt_settings("updater", UPDATER_DEFAULTS, updater)
    step = int(opt_state["step"])  # updates applied so far
    t = step + 1  # 1-based index of this update (for bias corrections)
    lr = learning_rate(step, updater, schedule)
    new_params = {}
    new_state = {"step": np.array(t, dtype=np.int64)}
    for k, p in params.items():
        m = opt_state.get(f"m/{k}")
        v = opt_state.get(f"v/{k}")
        p2, m2, v2 = _opt_update(name, h, lr, t, p, grads[k], m, v)
        # keep each array's dtype (a float64 gradient must not promote float32 params)
        new_params[k] = np.asarray(p2, dtype=p.dtype)
        if m2 is not None:
            new_state[f"m/{k}"] = np.asarray(m2, dtype=m.dtype)
        if v2 is not None:
            new_state[f"v/{k}"] = np.asarray(v2, dtype=v.dtype)
    return new_params, new_state
