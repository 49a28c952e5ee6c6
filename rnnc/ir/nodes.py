"""The typed IR: frozen dataclasses.

A :class:`Cell` is one recurrent step as a pure function in SSA form::

    (inputs, state, params) -> (output, state')

Its instructions live in three sections, in execution order:

``invariant``
    depends on parameters only; computed once per call (e.g. the concatenated
    weight matrix made by gate fusion).
``hoisted``
    depends on inputs and parameters only; computed once for all time steps
    as batched ``(B, T, n)`` arrays (e.g. ``W @ x + b`` for every step, one big
    matmul). Values here are indexed ``[:, t]`` inside the loop.
``body``
    everything that depends on the state; runs once per time step.

Every value has a *feature shape*. Values that carry a batch axis (inputs,
state and everything computed from them) are ``batched``: at run time they
have shape ``(B, *shape)`` inside the step and ``(B, T, *shape)`` when hoisted.
Parameters and values computed from parameters alone are unbatched.

A :class:`Model` wires cells into layers with heads and a loss; a
:class:`TrainPlan` adds windows, updater and regularisers. All sizes are
concrete integers by the time a model is lowered (``vocab: auto`` is resolved
from the dataset); batch ``B`` and time ``T`` stay symbolic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rnnc.errors import Span


Shape = tuple[int, ...]


@dataclass(frozen=True)
class Var:
    """An input or state variable of a cell: a batched vector of ``size`` features."""

    name: str
    size: int


@dataclass(frozen=True)
class Param:
    """A learnable parameter, named by the symbol used in the cell's equations."""

    name: str
    shape: Shape
    init: tuple[str, tuple[float, ...]]  # (initialiser name, its arguments)
    fan: tuple[int, int] | None = None  # (fan_in, fan_out) for Xavier-style initialisers

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Instr:
    """One SSA instruction: ``name = op(*args; attrs)``.

    ``args`` name inputs, state variables, parameters or earlier instructions.
    ``attrs`` are op-specific constants (an activation name, slice bounds, a
    scalar value), kept as a sorted tuple of pairs so the node stays hashable.
    """

    name: str
    op: str
    args: tuple[str, ...]
    shape: Shape
    batched: bool
    attrs: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False, repr=False)
    comment: str = field(default="", compare=False)

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Cell:
    """One recurrent step in SSA form (see the module docstring for the sections)."""

    name: str
    inputs: tuple[Var, ...]
    states: tuple[Var, ...]
    params: tuple[Param, ...]
    invariant: tuple[Instr, ...]
    hoisted: tuple[Instr, ...]
    body: tuple[Instr, ...]
    next_state: tuple[tuple[str, str], ...]  # (state name, value holding its next value)
    output: str  # the value the layer emits at each step
    equations: tuple[str, ...] = ()  # the source equations, for docstrings

    @property
    def instrs(self) -> tuple[Instr, ...]:
        return self.invariant + self.hoisted + self.body

    def with_sections(self, invariant=None, hoisted=None, body=None, **kw) -> Cell:
        return replace(
            self,
            invariant=self.invariant if invariant is None else tuple(invariant),
            hoisted=self.hoisted if hoisted is None else tuple(hoisted),
            body=self.body if body is None else tuple(body),
            **kw,
        )

    @property
    def output_size(self) -> int:
        return value_shape(self, self.output)[0]

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def name_maker(cell: Cell) -> Callable[[str], str]:
    """A function giving names no value of ``cell`` has yet: ``base``, else ``base_``, ...

    Each name it gives is taken from then on (passes that add instructions use one).
    """
    taken = {i.name for i in cell.instrs} | {p.name for p in cell.params} | {
        v.name for v in cell.inputs + cell.states}

    def fresh(base: str) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    return fresh


def value_shape(cell: Cell, name: str) -> Shape:
    """The feature shape of any name visible in ``cell``."""
    for v in cell.inputs + cell.states:
        if v.name == name:
            return (v.size,)
    for p in cell.params:
        if p.name == name:
            return p.shape
    for ins in cell.instrs:
        if ins.name == name:
            return ins.shape
    raise KeyError(name)


@dataclass(frozen=True)
class Layer:
    """A recurrent layer: one cell run over time in one or two directions.

    Parameters are named ``<layer>.<symbol>`` (``<layer>.<dir>.<symbol>`` for a
    bidirectional layer). States are named the same way.
    """

    name: str
    cell: Cell
    input_size: int
    directions: tuple[str, ...] = ("fwd",)  # ("fwd",), ("bwd",) or ("fwd", "bwd")
    merge: str = "concat"  # how a bidirectional layer merges its two outputs: concat | sum
    residual: bool = False  # output = cell output + layer input
    dropout: float = 0.0  # dropout on this layer's output (training only)

    @property
    def bidirectional(self) -> bool:
        return len(self.directions) == 2

    def prefix(self, direction: str) -> str:
        return f"{self.name}.{direction}." if self.bidirectional else f"{self.name}."

    @property
    def output_size(self) -> int:
        n = self.cell.output_size
        return 2 * n if self.bidirectional and self.merge == "concat" else n


@dataclass(frozen=True)
class InputEncoding:
    kind: str  # onehot | embedding | dense
    vocab: int = 0  # onehot/embedding: number of symbols
    size: int = 0  # width of the encoded vector fed to the first layer
    normalize: str = "none"  # dense: none | zscore (statistics from the data)
    init: tuple[str, tuple[float, ...]] = ("normal", (0.1,))

    @property
    def params(self) -> tuple[Param, ...]:
        if self.kind == "embedding":
            return (Param("input.E", (self.vocab, self.size), self.init, (self.vocab, self.size)),)
        return ()


@dataclass(frozen=True)
class Head:
    kind: str  # softmax (cross-entropy) | linear (identity output, MSE)
    at: str  # per_step | last
    input_size: int
    output_size: int
    init: tuple[str, tuple[float, ...]] = ("xavier_uniform", ())

    @property
    def params(self) -> tuple[Param, ...]:
        return (
            Param("head.W", (self.output_size, self.input_size), self.init,
                  (self.input_size, self.output_size)),
            Param("head.b", (self.output_size,), ("zeros", ())),
        )


@dataclass(frozen=True)
class Model:
    name: str
    input: InputEncoding
    layers: tuple[Layer, ...]
    head: Head
    stack: str = "plain"  # plain | residual | gated_feedback (already lowered into one cell)
    input_dropout: float = 0.0
    output_dropout: float = 0.0

    @property
    def params(self) -> tuple[Param, ...]:
        out: list[Param] = list(self.input.params)
        for layer in self.layers:
            for d in layer.directions:
                for p in layer.cell.params:
                    out.append(replace(p, name=layer.prefix(d) + p.name))
        out.extend(self.head.params)
        return tuple(out)

    @property
    def state_vars(self) -> tuple[Var, ...]:
        out = []
        for layer in self.layers:
            for d in layer.directions:
                for s in layer.cell.states:
                    out.append(Var(layer.prefix(d) + s.name, s.size))
        return tuple(out)

    @property
    def param_count(self) -> int:
        return sum(p.size for p in self.params)


@dataclass(frozen=True)
class TrainPlan:
    """How training runs: every field has a concrete value (defaults filled in)."""

    data: tuple[str, tuple[tuple[str, Any], ...]]  # (dataset name, options)
    k1: int | None = None  # truncated BPTT: every k1 steps ...
    k2: int | None = None  # ... backpropagate k2 steps (None: full BPTT)
    updater: tuple[str, tuple[tuple[str, float], ...]] = ("adam", ())
    schedule: tuple[str, tuple[tuple[str, float], ...]] | None = None
    clip_norm: float | None = None
    clip_value: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    epochs: int = 10
    batch: int = 32
    early_stop: tuple[str, int] | None = None  # (metric, patience)
    seed: int = 0
    reset: str = "sequence"  # sequence | document | never
    dtype: str = "float32"
    sample_every: int = 0
    sample_length: int = 200
    checkpoint_every: int = 0


@dataclass(frozen=True)
class Program:
    """Everything a backend needs: the model and (optionally) its training plan."""

    model: Model
    train: TrainPlan | None
    spec_hash: str
    spec_data: Any = field(default=None, compare=False)  # the normalised spec as plain data
    source_name: str = ""
