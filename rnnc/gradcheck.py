"""Gradient checks: a backend's gradients against central finite differences.

:func:`gradcheck` loads (or takes) a generated module, draws small random data
(``T`` steps, ``B`` rows, random lengths and resets when asked, a random
initial state) in float64 and compares every gradient ``loss_and_grad``
returns -- parameters, the initial state and, for dense inputs, ``xs`` --
with central differences of an independent reference objective.

The reference follows the contract's truncated BPTT: for each window (losses
at steps ``lo:e``, backpropagated through ``s:e``) it reruns the module's
``forward`` over ``s:e`` from the state entering step ``s``, computed once
from the unperturbed values (a constant), and scores only the window's steps.
Without windows this is the plain loss. The error of a gradient is
``max |g - fd| / max(max |g|, max |fd|)`` over the entries checked.

``rnnc gradcheck SPEC`` prints :func:`gradcheck_spec`'s report::

    >>> report = gradcheck_spec("specs/char_lstm.rnn")  # doctest: +SKIP
    >>> print(report.render())  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


# ----------------------------------------------------------------- loading


def load_module(source: str, name: str = "rnnc_generated") -> types.ModuleType:
    """Execute generated source as a fresh module (not added to sys.modules)."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    code = compile(source, module.__file__, "exec")
    exec(code, module.__dict__)  # noqa: S102 - our own generated code
    return module


def source_for(program: Any, backend: str = "numpy") -> str:
    """The generated module's source for a :class:`~rnnc.ir.nodes.Program`."""
    from rnnc.backends import get_backend

    return get_backend(backend).emit(program)


def module_for(program: Any, backend: str = "numpy") -> types.ModuleType:
    """Compile a :class:`~rnnc.ir.nodes.Program` with ``backend`` and load the result."""
    if backend == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    return load_module(source_for(program, backend), f"rnnc_gradcheck_{backend}")


def program_from_text(text: str, n_in: int | None = None, n_out: int | None = None,
                      passes: bool = True, name: str = "<spec>.rnn") -> Any:
    """Lower (and, with ``passes``, optimise) spec text; ``n_in``/``n_out`` fill ``auto``."""
    from rnnc.compiler import optimize
    from rnnc.ir.lower import Sizes, lower
    from rnnc.ir.passes import PIPELINE
    from rnnc.spec import parse_spec

    program = lower(parse_spec(text, name), sizes=Sizes(n_in, n_out, None))
    return optimize(program, disable=() if passes else PIPELINE)


def module_from_text(text: str, n_in: int | None = None, n_out: int | None = None,
                     passes: bool = True, backend: str = "numpy") -> types.ModuleType:
    """Compile spec text with ``backend`` and load the generated module."""
    return module_for(program_from_text(text, n_in, n_out, passes), backend)


# -------------------------------------------------------------------- data


def random_batch(module: types.ModuleType, T: int, B: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets that fit the module's input encoding and head."""
    inp, head = module.MODEL["input"], module.MODEL["head"]
    if inp["kind"] == "dense":
        xs = rng.normal(size=(B, T, inp["size"]))
    else:
        xs = rng.integers(0, inp["vocab"], size=(B, T))
    out = head["output_size"]
    if head["kind"] == "softmax":
        ys = rng.integers(0, out, size=(B, T) if head["at"] == "per_step" else (B,))
    else:
        ys = rng.normal(size=(B, T, out) if head["at"] == "per_step" else (B, out))
    return xs, ys


def windows(T: int, k1: int | None, k2: int | None) -> list[tuple[int, int, int]]:
    """(s, lo, e) for each truncated-BPTT window: losses at lo:e, backpropagated s:e.

    Window j scores steps j k1 ... min((j + 1) k1, T) - 1 and reaches back k2 steps from
    its nominal end (j + 1) k1 (so k1 = k2 detaches the state every k1 steps).
    """
    if k1 is None or k1 >= T:
        return [(0, 0, T)]
    k2 = k2 or k1
    return [(max(0, lo + k1 - k2), lo, min(lo + k1, T)) for lo in range(0, T, k1)]


# --------------------------------------------------------------- reference


@dataclass
class _Problem:
    module: types.ModuleType
    xs: np.ndarray
    ys: np.ndarray
    state: dict[str, np.ndarray]
    lengths: np.ndarray | None
    resets: np.ndarray | None
    T: int
    B: int
    windows: list[tuple[int, int, int]]
    entering: dict[tuple[int, int], dict[str, np.ndarray]] = field(default_factory=dict)

    def n_scored(self) -> float:
        """The steps (rows, for a last head) whose loss counts: valid, and not of class
        id -1 (no such step: 1, the loss is 0)."""
        scored = self.scored()
        if self.module.MODEL["head"]["at"] == "last":
            return float(max(scored.sum(), 1))
        valid = np.ones((self.B, self.T), dtype=bool)
        if self.lengths is not None:
            valid = np.arange(self.T)[None, :] < self.lengths[:, None]
        return float(max((valid & scored).sum(), 1))

    def scored(self) -> np.ndarray:
        """Whether each target counts: a softmax head's class id -1 does not."""
        if self.module.MODEL["head"]["kind"] != "softmax":
            return np.ones(self.ys.shape[:2] if self.ys.ndim == 3 else self.ys.shape[:1], bool)
        return np.asarray(self.ys) != -1

    def backward_keys(self) -> set[str]:
        """State entries of layer directions that run backward in time."""
        out = set()
        for la in self.module.MODEL["layers"]:
            for d in la["directions"]:
                if d == "bwd":
                    pre = f"{la['name']}.bwd." if len(la["directions"]) == 2 else f"{la['name']}."
                    out |= {pre + s for s in la["states"]}
        return out

    def _run(self, params, s: int, e: int, state):
        _, final = self.module.forward(params, self.xs[:, s:e], state, self._lengths(s, e),
                                       self._resets(s, e))
        # copies: a state a cell passes through unchanged (c' = c) comes back as the very
        # array given, which the finite differences then perturb in place
        return {k: np.array(v, dtype=np.float64) for k, v in final.items()}

    def boundary(self, params, p: int) -> dict[str, np.ndarray]:
        """The full run's state at position p, from runs over parts of the sequence only.

        Forward-in-time directions: the state after step p - 1; backward-in-time ones:
        the state after processing step p (entering step p - 1). A forward layer above a
        backward one needs the backward state at p, and that one the forward state below
        it at p: alternating prefix and suffix runs, one round per layer, settle it.
        """
        back = self.backward_keys()
        fwd = {k: v for k, v in self.state.items() if k not in back}
        bwd = {k: v for k, v in self.state.items() if k in back}
        for _ in range(len(self.module.MODEL["layers"])):
            if back and p < self.T:
                suffix = self._run(params, p, self.T, {**fwd, **{k: self.state[k] for k in back}})
                bwd = {k: suffix[k] for k in back}
            if p > 0:
                prefix = self._run(params, 0, p, {**{k: self.state[k] for k in fwd}, **bwd})
                fwd = {k: prefix[k] for k in fwd}
        return {**fwd, **bwd}

    def freeze(self, params: dict[str, np.ndarray]) -> None:
        """The state entering each window from outside, from the unperturbed values.

        Forward-in-time directions enter at step s with the full run's state after step
        s - 1, backward-in-time ones at step e - 1 with their state after step e.
        """
        back = self.backward_keys()
        at = {}
        for s, _, e in self.windows:
            for p in (s, e):
                if p not in at:
                    at[p] = self.boundary(params, p)
        for s, _, e in self.windows:
            self.entering[(s, e)] = {k: (at[e][k] if k in back else at[s][k])
                                     for k in self.state}

    def _lengths(self, s: int, e: int):
        if self.lengths is None:
            return None
        return np.clip(self.lengths - s, 0, e - s)

    def _resets(self, s: int, e: int):
        return None if self.resets is None else self.resets[:, s:e]

    def objective(self, params, xs=None, state=None) -> float:
        """Sum over the windows of the window's loss, the entering state held constant."""
        xs = self.xs if xs is None else xs
        state = self.state if state is None else state
        head = self.module.MODEL["head"]
        total = 0.0
        back = self.backward_keys()
        for s, lo, e in self.windows:
            start = dict(self.entering[(s, e)])
            for k in state:  # the initial state enters windows that reach step 0 (T - 1)
                if (e == self.T) if k in back else (s == 0):
                    start[k] = state[k]
            lengths = self._lengths(s, e)
            out, _ = self.module.forward(params, xs[:, s:e], start, lengths, self._resets(s, e))
            out = np.asarray(out, dtype=np.float64)
            if head["at"] == "per_step":
                w = np.ones((self.B, e - s))
                if lengths is not None:
                    w = (np.arange(e - s)[None, :] < lengths[:, None]).astype(float)
                w[:, : lo - s] = 0.0
                w = w * self.scored()[:, s:e]
                total += float(np.sum(_step_losses(out, self.ys[:, s:e], head["kind"]) * w))
            else:
                last = (np.full(self.B, self.T) if self.lengths is None else self.lengths) - 1
                w = ((last >= lo) & (last < e) & self.scored()).astype(float)
                if w.any():
                    total += float(np.sum(_step_losses(out, self.ys, head["kind"]) * w))
        return total / self.n_scored()


def _step_losses(out: np.ndarray, ys: np.ndarray, kind: str) -> np.ndarray:
    if kind == "softmax":  # (a class id -1 is not scored: its weight is 0)
        ids = np.maximum(np.asarray(ys), 0)
        return -np.log(np.take_along_axis(out, ids[..., None], axis=-1)[..., 0])
    d = out - ys
    return np.mean(d * d, axis=-1)


# ------------------------------------------------------------------- check


def _central(f, x: np.ndarray, idx: Iterable[tuple[int, ...]], eps: float) -> np.ndarray:
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        out.append((up - down) / (2 * eps))
    return np.array(out)


def _pick(shape: tuple[int, ...], limit: int | None, rng: np.random.Generator):
    every = list(np.ndindex(*shape))
    if limit is None or len(every) <= limit:
        return every
    chosen = rng.choice(len(every), size=limit, replace=False)
    return [every[i] for i in sorted(chosen)]


def gradcheck(target: Any, seed: int = 0, T: int = 5, B: int = 3, lengths: bool = True,
              resets: bool = False, eps: float = 1e-5, max_entries: int | None = None,
              backend: str = "numpy", jitter: float = 0.1,
              unscored: float = 0.0, info: dict | None = None) -> list[tuple[str, float]]:
    """``[(name, max relative error)]`` of every gradient of a generated module.

    ``target`` is a loaded module or a Program (compiled with ``backend``). Runs in
    float64 on ``T`` steps and ``B`` rows, with random ``lengths`` (some rows shorter
    than T) and ``resets`` when asked, and the module's truncated-BPTT windows
    (``K1``/``K2``). ``max_entries`` checks a random subset of each array's entries.
    Parameters get ``jitter`` noise so that zero-initialised ones are generic. With a
    softmax head, a share ``unscored`` of the targets (that fraction of them, rounded, at
    least one; drawn at random) are -1, not scored; ``info``, when given, gets the batch's
    ``targets`` and the number ``unscored`` made -1.
    """
    check_unscored(unscored, target)
    module = target if isinstance(target, types.ModuleType) else module_for(target, backend)
    rng = np.random.default_rng(seed)
    params = {k: np.array(v, dtype=np.float64) for k, v in module.init_params(seed,
                                                                             "float64").items()}
    for k in params:
        params[k] = params[k] + jitter * rng.normal(size=params[k].shape)
    xs, ys = random_batch(module, T, B, rng)
    marked = 0
    if unscored:
        marked = min(ys.size, max(1, round(unscored * ys.size)))
        flat = ys.reshape(-1).copy()
        flat[rng.choice(ys.size, size=marked, replace=False)] = -1
        ys = flat.reshape(ys.shape)
    if info is not None:
        info.update(targets=int(ys.size), unscored=marked)
    state = {k: rng.normal(size=(B,) + tuple(shape)) * 0.5
             for k, shape in module.STATE_SHAPES.items()}
    lens = None
    if lengths:
        lens = rng.integers(max(1, T // 2), T + 1, size=B)
        lens[0] = T
    rs = rng.random((B, T)) < 0.25 if resets else None
    k1, k2 = getattr(module, "K1", None), getattr(module, "K2", None)
    prob = _Problem(module, xs, ys, state, lens, rs, T, B, windows(T, k1, k2))
    prob.freeze(params)
    _, grads, _ = module.loss_and_grad(params, xs, ys, state, lens, rs, wrt_inputs=True)
    grads = {k: np.asarray(v, dtype=np.float64) for k, v in grads.items()}
    report = []
    for name, p in params.items():
        idx = _pick(p.shape, max_entries, rng)
        fd = _central(lambda: prob.objective(params), p, idx, eps)
        report.append((name, _rel_err(grads[name], idx, fd)))
    for name in module.STATE_SHAPES:
        s = state[name]
        idx = _pick(s.shape, max_entries, rng)
        fd = _central(lambda: prob.objective(params, state=state), s, idx, eps)
        report.append(("state/" + name, _rel_err(grads["state/" + name], idx, fd)))
    if module.MODEL["input"]["kind"] == "dense":
        idx = _pick(xs.shape, max_entries, rng)
        fd = _central(lambda: prob.objective(params, xs=xs), xs, idx, eps)
        report.append(("xs", _rel_err(grads["xs"], idx, fd)))
    return report


def check_unscored(unscored: float, target: Any = None) -> None:
    """``unscored`` is a fraction in [0, 1), and > 0 only for a softmax head, the one loss
    with class targets (a class id -1 is not scored)."""
    from rnnc.errors import RnncError

    if not 0 <= unscored < 1:  # also refuses NaN
        raise RnncError(f"--unscored must be a fraction >= 0 and < 1, not {unscored}", None,
                        "e.g. --unscored 0.3 (a fraction of 1 would score nothing)")
    if target is None:
        return
    head = target.MODEL["head"] if isinstance(target, types.ModuleType) else None
    if head is None:
        head = {"kind": target.model.head.kind}
    if unscored and head["kind"] != "softmax":
        raise RnncError(
            f"--unscored marks class targets -1 (not scored), but this model's head is "
            f"{head['kind']} (mean squared error on real-valued targets, which have no class "
            "id to mark)", None, "--unscored needs a softmax head; leave it out here")


def _rel_err(g: np.ndarray, idx, fd: np.ndarray) -> float:
    got = np.array([g[i] for i in idx])
    scale = max(float(np.max(np.abs(g))) if g.size else 0.0,
                float(np.max(np.abs(fd))) if fd.size else 0.0, 1e-12)
    return float(np.max(np.abs(got - fd))) / scale if fd.size else 0.0


# ------------------------------------------------------------------ report


@dataclass
class GradcheckReport:
    """The result of :func:`gradcheck_spec`: per-array errors against a tolerance."""

    spec: str
    backend: str
    tol: float
    rows: list[tuple[str, float]]
    T: int
    B: int
    windows: list[tuple[int, int, int]]
    k1: int | None = None
    unscored: float = 0.0
    n_unscored: int = 0
    n_targets: int = 0

    @property
    def ok(self) -> bool:
        return all(err <= self.tol for _, err in self.rows)

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.rows, key=lambda r: r[1]) if self.rows else ("", 0.0)

    def render(self) -> str:
        width = max([len(n) for n, _ in self.rows] + [9])
        lines = [f"gradcheck {self.spec} (backend {self.backend}, float64, T={self.T}, "
                 f"B={self.B}, {len(self.windows)} window(s)"
                 + (f", unscored {self.unscored:g}: {self.n_unscored} of {self.n_targets} "
                    "class targets -1" if self.unscored else "") + ")",
                 f"  {'gradient'.ljust(width)}  max rel err  ok"]
        for name, err in self.rows:
            mark = "ok" if err <= self.tol else "FAIL"
            lines.append(f"  {name.ljust(width)}  {err:11.2e}  {mark}")
        if len(self.windows) == 1 and self.k1 is not None:
            lines.append(f"note: one truncated-BPTT window (k1 {self.k1} >= T {self.T}): "
                         f"the truncation itself is not checked; --steps {self.k1 + 1} "
                         "or more checks it")
        verdict = "passed" if self.ok else "FAILED"
        lines.append(f"{verdict}: worst {self.worst[0]} {self.worst[1]:.2e} "
                     f"(tolerance {self.tol:.0e})")
        return "\n".join(lines)


# The longest sequence gradcheck_spec picks by itself (a spec's truncated-BPTT windows
# are covered up to here; --steps goes further).
AUTO_STEPS_MAX = 64


def auto_steps(k1: int | None, k2: int | None, floor: int = 5) -> int:
    """Steps enough for two truncated-BPTT windows, the second reaching back its full k2
    (``floor`` without truncation), at most AUTO_STEPS_MAX."""
    if k1 is None:
        return floor
    return max(floor, min(k1 + max(k1, k2 or k1) + 1, AUTO_STEPS_MAX))


def gradcheck_spec(spec_path: str | Path, backend: str = "numpy", tol: float = 1e-6,
                   seed: int = 0, T: int | None = None, B: int = 3,
                   max_entries: int | None = 12,
                   disable: Iterable[str] = (), unscored: float = 0.0) -> GradcheckReport:
    """Compile the spec at ``spec_path`` and check its gradients (see :func:`gradcheck`).

    ``T=None`` picks the steps: 5, or enough for two of the spec's truncated-BPTT
    windows (:func:`auto_steps`). ``unscored`` marks that fraction of the batch's class
    targets -1 (a softmax head only)."""
    from rnnc.compiler import build
    from rnnc.errors import RnncError
    from rnnc.spec import load_spec

    path = Path(spec_path)
    spec = load_spec(path)
    program = build(spec, disable=disable, base_dir=path.parent)
    try:
        check_unscored(unscored, program)  # before the (slow, for JAX) compile
    except RnncError as err:  # at the spec's head
        raise err.with_span(spec.model.key_span("head")) from None
    module = module_for(program, backend)
    if T is None:
        T = auto_steps(getattr(module, "K1", None), getattr(module, "K2", None))
    info: dict = {}
    rows = gradcheck(module, seed=seed, T=T, B=B, lengths=True, resets=True,
                     max_entries=max_entries, unscored=unscored, info=info)
    k1, k2 = getattr(module, "K1", None), getattr(module, "K2", None)
    return GradcheckReport(str(spec_path), backend, tol, rows, T, B, windows(T, k1, k2), k1,
                           unscored, info["unscored"], info["targets"])


if __name__ == "__main__":  # pragma: no cover - python -m rnnc.gradcheck SPEC
    rep = gradcheck_spec(sys.argv[1])
    print(rep.render())
    raise SystemExit(0 if rep.ok else 1)
