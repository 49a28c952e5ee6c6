"""Per-op knowledge in one table: arity, how the op reads as array code, its derivative.

Every op of the IR is a row of :data:`OPS`. A backend turns an instruction
into source text with :func:`render` and a *namespace prefix* (``np`` for
NumPy, ``jnp`` for JAX): both backends share this table, so the two agree on
semantics by construction; a backend may override single rows (its own
dispatch dict) where a library has a better primitive (``jax.nn.sigmoid``).

Gradient rules live in :mod:`rnnc.ir.passes.autodiff`, keyed by the same op
names.

Forward ops (batched operands have a leading batch axis, and a time axis
too when hoisted; ``...`` below stands for those axes):

=========  ==============================  =====================================
op         meaning                         array code
=========  ==============================  =====================================
const      scalar constant ``value``       ``0.5``
add/sub/   elementwise, broadcasting       ``a + b`` ...
mul/div
neg        ``-a``                          ``-a``
matmul     ``W @ v`` (W: (m, n), v: n)     ``v @ W.T``
act        activation ``fn`` of ``a``      ``np.tanh(a)`` ...
clip       clip to ``[lo, hi]``            ``np.clip(a, lo, hi)``
concat     feature-axis concatenation      ``np.concatenate([a, b], axis=-1)``
slice      features ``lo:hi``              ``a[..., lo:hi]``
expand     (…, 1) to (…, n) broadcast      ``np.broadcast_to(a, a.shape[:-1] + (n,))``
sumf       sum over the features, (…, 1)   ``a.sum(axis=-1, keepdims=True)``
pconcat    parameter concatenation         ``np.concatenate([W1, W2], axis=0)``
=========  ==============================  =====================================

Backward-only ops (made by autodiff):

==========  ================================  ====================================
matmul_t    ``W.T @ g`` per example           ``g @ W``
outer       ``sum over ... of g v^T``         ``_outer(g, v)`` (a helper)
bsum        sum over batch/time axes          ``_bsum(g, ndim)``
act_grad    ``g * fn'(x)`` from ``y = fn(x)``  ``g * (1.0 - y * y)`` (tanh) ...
clip_grad   ``g`` where ``lo < y < hi``       ``g * ((y > lo) & (y < hi))``
pad         gradient of a slice               ``_pad(g, lo, n - hi)``
zeros       zeros shaped like ``a``           ``np.zeros_like(a)``
==========  ================================  =====================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rnnc.ir.nodes import Instr


ACTIVATIONS = (
    "sigmoid", "tanh", "relu", "softsign", "hard_sigmoid", "identity", "softplus", "exp",
    "log", "sqrt", "rsqrt", "elu", "log_sigmoid",
)
"""Element-wise functions a spec may call, each with a derivative written in its output."""

# f(x) in terms of the namespace `xp`; {a} is the operand.
ACT_FORWARD: dict[str, str] = {
    "sigmoid": "0.5 * (1.0 + {xp}.tanh(0.5 * {a}))",
    "tanh": "{xp}.tanh({a})",
    "relu": "{xp}.maximum({a}, 0.0)",
    "softsign": "{a} / (1.0 + {xp}.abs({a}))",
    "hard_sigmoid": "{xp}.clip(0.2 * {a} + 0.5, 0.0, 1.0)",
    "identity": "{a}",
    "softplus": "{xp}.logaddexp({a}, 0.0)",
    "exp": "{xp}.exp({a})",
    "log": "{xp}.log({a})",
    "sqrt": "{xp}.sqrt({a})",
    "rsqrt": "1.0 / {xp}.sqrt({a})",
    # expm1 of min(x, 0): the branch not taken cannot overflow (nor make a nan gradient)
    "elu": "{xp}.where({a} > 0.0, {a}, {xp}.expm1({xp}.minimum({a}, 0.0)))",
    "log_sigmoid": "-{xp}.logaddexp(-{a}, 0.0)",
}

# f'(x) * g written with y = f(x) only, so the backward pass needs no pre-activation.
ACT_GRAD: dict[str, str] = {
    "sigmoid": "{g} * {y} * (1.0 - {y})",
    "tanh": "{g} * (1.0 - {y} * {y})",
    "relu": "{g} * ({y} > 0.0)",
    "softsign": "{g} * (1.0 - {xp}.abs({y})) ** 2",
    "hard_sigmoid": "{g} * (0.2 * (({y} > 0.0) & ({y} < 1.0)))",
    "identity": "{g}",
    "softplus": "{g} * (1.0 - {xp}.exp(-{y}))",
    "exp": "{g} * {y}",
    "log": "{g} * {xp}.exp(-{y})",  # 1 / x = e^-y
    "sqrt": "{g} * 0.5 / {y}",
    "rsqrt": "-0.5 * {g} * {y} * {y} * {y}",  # -x^(-3/2) / 2 = -y^3 / 2
    "elu": "{xp}.where({y} > 0.0, {g}, {g} * ({y} + 1.0))",  # e^x = y + 1 below 0
    "log_sigmoid": "-{g} * {xp}.expm1({y})",  # 1 - sigmoid(x) = 1 - e^y
}

ACT_MATH: dict[str, str] = {
    "sigmoid": "σ(x) = 1 / (1 + e^-x)",
    "tanh": "tanh(x)",
    "relu": "max(x, 0)",
    "softsign": "x / (1 + |x|)",
    "hard_sigmoid": "clip(0.2 x + 0.5, 0, 1)",
    "identity": "x",
    "softplus": "log(1 + e^x)",
    "exp": "e^x",
    "log": "log x",
    "sqrt": "√x",
    "rsqrt": "1 / √x",
    "elu": "x if x > 0 else e^x - 1",
    "log_sigmoid": "log σ(x) = -log(1 + e^-x)",
}


def fmt_float(v: float) -> str:
    """A float literal that reads well and round-trips exactly."""
    v = float(v)
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v)}.0"
    return repr(v)


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int | None  # None: variadic
    render: Callable[[str, Sequence[str], Instr], str]
    elementwise: bool = False


def _bin(sym: str) -> Callable[[str, Sequence[str], Instr], str]:
    return lambda xp, a, ins: f"{a[0]} {sym} {a[1]}"


def _act(xp: str, a: Sequence[str], ins: Instr) -> str:
    return ACT_FORWARD[ins.attr("fn")].format(xp=xp, a=a[0])


def _act_grad(xp: str, a: Sequence[str], ins: Instr) -> str:
    y, g = a
    return ACT_GRAD[ins.attr("fn")].format(xp=xp, y=y, g=g)


OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("const", 0, lambda xp, a, ins: fmt_float(ins.attr("value"))),
        OpDef("add", 2, _bin("+"), True),
        OpDef("sub", 2, _bin("-"), True),
        OpDef("mul", 2, _bin("*"), True),
        OpDef("div", 2, _bin("/"), True),
        OpDef("neg", 1, lambda xp, a, ins: f"-{a[0]}", True),
        OpDef("matmul", 2, lambda xp, a, ins: f"{a[1]} @ {a[0]}.T"),
        OpDef("act", 1, _act, True),
        OpDef(
            "clip", 1,
            lambda xp, a, ins: f"{xp}.clip({a[0]}, {fmt_float(ins.attr('lo'))}, "
            f"{fmt_float(ins.attr('hi'))})",
            True,
        ),
        OpDef("concat", None,
              lambda xp, a, ins: f"{xp}.concatenate([{', '.join(a)}], axis=-1)"),
        OpDef("slice", 1,
              lambda xp, a, ins: f"{a[0]}[..., {ins.attr('lo')}:{ins.attr('hi')}]"),
        OpDef("expand", 1,
              lambda xp, a, ins: f"{xp}.broadcast_to({a[0]}, {a[0]}.shape[:-1] + "
              f"({ins.attr('n')},))"),
        OpDef("pconcat", None,
              lambda xp, a, ins: f"{xp}.concatenate([{', '.join(a)}], axis=0)"),
        # backward-only
        OpDef("matmul_t", 2, lambda xp, a, ins: f"{a[1]} @ {a[0]}"),
        OpDef("outer", 2, lambda xp, a, ins: f"_outer({a[0]}, {a[1]})"),
        OpDef("bsum", 1, lambda xp, a, ins: f"_bsum({a[0]}, {len(ins.shape)})"),
        OpDef("act_grad", 2, _act_grad, True),
        OpDef(
            "clip_grad", 2,
            lambda xp, a, ins: f"{a[1]} * (({a[0]} > {fmt_float(ins.attr('lo'))}) & "
            f"({a[0]} < {fmt_float(ins.attr('hi'))}))",
            True,
        ),
        OpDef("pad", 1,
              lambda xp, a, ins: f"_pad({a[0]}, {ins.attr('lo')}, {ins.attr('after')})"),
        OpDef("sumf", 1, lambda xp, a, ins: f"{a[0]}.sum(axis=-1, keepdims=True)"),
        OpDef("zeros", 1, lambda xp, a, ins: f"{xp}.zeros_like({a[0]})"),
    ]
}

# Ops whose result depends on nothing but attributes and operands (safe for CSE).
PURE = frozenset(OPS)


def render(ins: Instr, xp: str, names: Callable[[str], str] = lambda s: s,
           overrides: dict[str, Callable[[str, Sequence[str], Instr], str]] | None = None,
           ) -> str:
    """Array code for ``ins`` (right-hand side only), with operands renamed by ``names``."""
    args = [names(a) for a in ins.args]
    fn = (overrides or {}).get(ins.op) or OPS[ins.op].render
    return fn(xp, args, ins)


def attrs(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kw.items()))


RUNTIME_HELPERS = '''
def _outer(g, v):
    """sum over every leading (batch, time) axis of the outer products g v^T."""
    return g.reshape(-1, g.shape[-1]).T @ v.reshape(-1, v.shape[-1])


def _bsum(g, ndim):
    """Sum g over its leading axes down to a parameter of `ndim` dimensions."""
    return g.reshape((-1,) + g.shape[g.ndim - ndim :]).sum(axis=0)


def _pad(g, before, after):
    """Gradient of a feature slice: g placed back among zeros."""
    return {xp}.pad(g, [(0, 0)] * (g.ndim - 1) + [(before, after)])
'''
