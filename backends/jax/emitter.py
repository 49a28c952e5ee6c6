"""Emit a standalone JAX module from a :class:`~rnnc.ir.nodes.Program`.

The module follows ``docs/generated-module.md``. What this file writes is the
model-specific part: constants, one straight-line step function per layer
(plus its ``invariant`` and ``hoisted`` sections when the passes made them),
the wiring of layers, input encoding and head. The model-independent part
(``lax.scan`` driver, objectives, truncated-BPTT windows, jitted entry points,
sharding helpers) is pasted from the sections of ``template.py``; the update
rules are pasted verbatim from ``runtime_optim.py``.

Emitters print; they do not decide semantics. Per-instruction array code comes
from the shared op table (:func:`rnnc.ir.ops.render`) with a few JAX rows
overridden (``jax.nn.sigmoid``, ``jax.nn.relu``).
"""

from __future__ import annotations

import builtins
import re
import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rnnc.errors import BackendError
from rnnc.ir.nodes import Cell, Instr, Layer, Model, Program, value_shape
from rnnc.ir.ops import ACT_FORWARD, RUNTIME_HELPERS, render
from rnnc.ir.passes.autodiff import CellGrad, autodiff, verify_grad

from ..common import INPUT_CHECKS, ModuleEmitterBase, plain, step_refusal
from ..pyfmt import (
    WIDTH,
    Seq,
    call,
    clean,
    comment,
    doc_text,
    docstring,
    literal,
    py_str,
    with_comment,
)
from .vjpgen import (
    FM_HELPERS,
    FeatureMajorVjpCode,
    VjpCellCode,
    remat_cheap_saved,
    sink_cheap_hoisted,
)
from .vjpgen import HELPERS as VJP_HELPERS


# Activations with a better JAX primitive than the shared formula (same values; relu's
# gradient at 0 is 0 like the NumPy backend's, where jnp.maximum would give 0.5).
ACT_JAX = {
    "sigmoid": "jax.nn.sigmoid({a})",
    "relu": "jax.nn.relu({a})",
}

# lax.scan's unroll factor by platform (jax.default_backend() when tracing). Measured on
# the char-LM workload (docs/jax.md): on an H100, 4 steps per iteration train 1.6x faster
# than 1 (and beat cuDNN); on CPU it makes no difference but compiles slower.
UNROLL = {"cpu": 1, "gpu": 4, "tpu": 4}

# The layout of batched values inside the custom VJP's loops: "batch" (B, n) as
# everywhere else; "feature" (n, B), emitted as a second pair of step functions that the
# template runs on CPU (FEATURE_MAJOR); "auto" does so where fm_max_batch says it pays.
LAYOUTS = ("auto", "batch", "feature")


def _has_product(cell: Cell, rows: int, cols: int) -> bool:
    """Whether the step multiplies a batched value by a weight of >= rows x cols."""

    def wide(shape: tuple[int, ...]) -> bool:
        return len(shape) == 2 and shape[0] >= rows and shape[1] >= cols

    return any(
        i.op == "matmul" and i.batched and wide(value_shape(cell, i.args[0])) for i in cell.body
    )


def fm_max_batch(cell: Cell, training: bool = True) -> int | None:
    """Up to which batch size the feature-major loops are expected to be faster on CPU:
    for the training objectives (forward and backward loops), or for forward alone; 0 for
    none, None for every size. Measured on the char-LM (training step, Adam included,
    docs/performance.md, session 6): XLA's CPU dot gains most from `W @ h` at small
    batches (a scan of 2048 x 512 products: 2.2x at B = 8, 1.4-1.6x at 32, 1.1x at 64,
    1.2x at 128), but a training step also runs its element-wise work transposed:
    LSTM/GRU H=512 (a product of >= 1024 outputs from >= 512 inputs) gain up to B = 32
    (lstm512 1.37x at 8, 1.14x at 16, 1.10-1.18x at 32) and lose from 64 on (0.94-0.98,
    gru512 0.89); the MGU's 512 x 512 products gain up to 16 (1.44x at 8, 1.15x at 16,
    0.97x at 32); narrower cells (LSTM H=256, H=128) tie or lose. Forward alone gains
    from 512 x 512 on at every batch size measured (8 to 128: 1.1-1.7x)."""
    if not training:
        return None if _has_product(cell, 512, 512) else 0
    if _has_product(cell, 1024, 512):
        return 32
    return 16 if _has_product(cell, 512, 512) else 0


FEATURE_MAJOR = {"cpu": True, "gpu": False, "tpu": False}

# Names a cell function uses itself; spec names that collide get a trailing "_".
_RESERVED = {"p", "inv", "hx", "jnp", "jax", "np", "functools", "_outer", "_bsum", "_pad"}
_RESERVED |= set(dir(builtins))


def _act(xp: str, a: Sequence[str], ins: Instr) -> str:
    fn = ins.attr("fn")
    if fn in ACT_JAX:
        return ACT_JAX[fn].format(a=a[0])
    return ACT_FORWARD[fn].format(xp=xp, a=a[0])


OVERRIDES = {"act": _act}


def _version() -> str:
    try:
        from rnnc import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"


def _ident(s: str) -> str:
    return re.sub(r"\W", "_", s)


# ------------------------------------------------------------------------- cells


@dataclass
class CellCode:
    """The functions of one layer's cell, and the entry of CELLS that names them."""

    functions: list[str] = field(default_factory=list)
    entry: dict[str, str] = field(default_factory=dict)


def _wrap_equation(eq: str, indent: int) -> list[str]:
    pad = " " * indent
    return textwrap.wrap(
        doc_text(eq),
        WIDTH - indent,
        initial_indent=pad,
        subsequent_indent=pad + "    ",
        break_long_words=True,
        break_on_hyphens=False,
    ) or [pad]


class _CellEmitter:
    """Writes the invariant / hoisted / step functions of one layer's cell."""

    def __init__(self, layer: Layer, fname: str):
        self.layer = layer
        self.cell: Cell = layer.cell
        self.fname = fname
        cell = self.cell
        if len(cell.inputs) != 1:
            raise BackendError(
                f"cell '{cell.name}' of layer '{layer.name}' has {len(cell.inputs)} inputs; "
                "the JAX backend runs cells with one input",
                None,
            )
        self.params = {p.name for p in cell.params}
        # unbatched hoisted values depend on parameters only: compute them with the invariant
        self.invariant = list(cell.invariant) + [i for i in cell.hoisted if not i.batched]
        self.hoisted = [i for i in cell.hoisted if i.batched]
        self.body = list(cell.body)
        self.section = {i.name: "invariant" for i in self.invariant}
        self.section.update({i.name: "hoisted" for i in self.hoisted})
        self.section.update({i.name: "body" for i in self.body})
        self.local = self._local_names()
        self.live = self._live()

    def _local_names(self) -> dict[str, str]:
        cell = self.cell
        taken: set[str] = set()
        out = {}
        for name in [v.name for v in cell.inputs + cell.states] + [i.name for i in cell.instrs]:
            local = name
            while local in _RESERVED or local in taken:
                local += "_"
            taken.add(local)
            out[name] = local
        return out

    def _live(self) -> set[str]:
        """Names whose value reaches the output or a next state (the rest is not written)."""
        cell = self.cell
        live = {cell.output} | {v for _, v in cell.next_state}
        order = self.invariant + self.hoisted + self.body
        for ins in reversed(order):
            if ins.name in live:
                live.update(ins.args)
        return live

    # -- names as seen from inside each function
    def ref(self, name: str, where: str) -> str:
        if name in self.params:
            return f"p[{py_str(name)}]"
        sec = self.section.get(name)
        if sec == "invariant" and where != "invariant":
            return f"inv[{py_str(name)}]"
        if sec == "hoisted" and where == "body":
            return f"hx[{py_str(name)}]"
        return self.local[name]

    def _splits(self) -> dict[str, tuple[str, list[Instr]]]:
        """Slices that tile a value exactly, keyed by the first of them: one jnp.split.

        Gate fusion leaves ``h_proj[..., 0:H]``, ``h_proj[..., H:2H]``, ...; as one
        ``jnp.split`` their gradient is one concatenation, where separate slices
        transpose to a padded array each and their sum (measured 13% of an LSTM
        training step on CPU).
        """
        by_operand: dict[str, list[Instr]] = {}
        section_of: dict[str, str] = {}
        for sec, instrs in (("invariant", self.invariant), ("hoisted", self.hoisted),
                            ("body", self.body)):
            for ins in instrs:
                section_of[ins.name] = sec
                if ins.op == "slice":
                    by_operand.setdefault(ins.args[0], []).append(ins)
        out: dict[str, tuple[str, list[Instr]]] = {}
        for operand, slices in by_operand.items():
            tiles = sorted(slices, key=lambda i: i.attr("lo"))
            size = value_shape(self.cell, operand)[-1]
            bounds = [(i.attr("lo"), i.attr("hi")) for i in tiles]
            contiguous = all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            if (len(tiles) < 2 or bounds[0][0] != 0 or bounds[-1][1] != size or not contiguous
                    or len({section_of[i.name] for i in tiles}) != 1
                    or not all(i.name in self.live for i in tiles)):
                continue
            first = min(tiles, key=lambda i: list(section_of).index(i.name))
            out[first.name] = (operand, tiles)
        return out

    def _split_lines(self, ins: Instr, where: str) -> list[str] | None:
        if ins.name in self.split_first:
            operand, tiles = self.split_first[ins.name]
            targets = ", ".join(self.local[i.name] for i in tiles)
            cuts = ", ".join(str(i.attr("hi")) for i in tiles[:-1])
            line = (f"    {targets} = jnp.split({self.ref(operand, where)}, [{cuts}], "
                    "axis=-1)")
            return [line] if len(line) <= WIDTH else None
        if ins.name in self.split_rest:
            return []
        return None

    def _instr_lines(self, ins: Instr, where: str) -> list[str]:
        target = self.local[ins.name]
        split = self._split_lines(ins, where)
        if split is not None:
            return split

        def names(a: str) -> str:
            return self.ref(a, where)

        if ins.op in ("concat", "pconcat"):
            axis = "-1" if ins.op == "concat" else "0"
            args = [Seq([names(a) for a in ins.args]), f"axis={axis}"]
            code = "\n".join(call(f"{target} = jnp.concatenate", args, "    "))
        else:
            code = f"    {target} = {render(ins, 'jnp', names, OVERRIDES)}"
        if "\n" not in code and len(code) > WIDTH:  # long names: split as ruff would
            return with_comment(code[4:], "", "    ")
        if "\n" not in code:
            note = comment(ins.comment, width=WIDTH - len(code) - 2)
            shown = clean(ins.comment).strip()
            if note and shown not in (ins.name, code.split(" = ", 1)[1]):
                code += "  " + note
        return [code]

    @staticmethod
    def _dict_return(items: list[str]) -> str:
        one = "    return {" + ", ".join(items) + "}"
        if len(one) <= WIDTH:
            return one
        return "    return {\n" + "".join(f"        {i},\n" for i in items) + "    }"

    def _used_by(
        self, section_instrs: list[Instr], sources: set[str], extra: set[str]
    ) -> list[str]:
        """Values of `sources` read by live instructions of section_instrs or in `extra`."""
        out: list[str] = []
        for ins in section_instrs:
            if ins.name in self.live:
                out.extend(a for a in ins.args if a in sources and a not in out)
        out.extend(n for n in sorted(extra & sources) if n not in out)
        return out

    def emit(self) -> CellCode:
        cell, layer = self.cell, self.layer
        code = CellCode()
        x = self.local[cell.inputs[0].name]
        states = [self.local[s.name] for s in cell.states]
        ends = {cell.output} | {v for _, v in cell.next_state}
        inv_names = {i.name for i in self.invariant}
        hx_names = {i.name for i in self.hoisted}
        title = f"{layer.name} ({cell.name})"
        self.split_first = self._splits()
        self.split_rest = set()
        where = {i.name: sec for sec, instrs in (("invariant", self.invariant),
                                                 ("hoisted", self.hoisted), ("body", self.body))
                 for i in instrs}
        by_name = {i.name: i for i in self.invariant + self.hoisted + self.body}
        for name, (_operand, tiles) in list(self.split_first.items()):
            if self._split_lines(by_name[name], where[name]) is None:
                del self.split_first[name]  # the line would be too long: keep the slices
            else:
                self.split_rest.update(i.name for i in tiles if i.name != name)

        inv_live = [i for i in self.invariant if i.name in self.live]
        hx_live = [i for i in self.hoisted if i.name in self.live]
        body_live = [i for i in self.body if i.name in self.live]

        if inv_live:
            lines = [
                f"def {self.fname}_invariant(p):",
                f'    """{doc_text(title)}: values of parameters only, once per call."""',
            ]
            for ins in inv_live:
                lines += self._instr_lines(ins, "invariant")
            needed = self._used_by(hx_live + body_live, inv_names, ends)
            lines.append(self._dict_return([f"{py_str(n)}: {self.local[n]}" for n in needed]))
            code.functions.append("\n".join(lines))
            code.entry["invariant"] = f"{self.fname}_invariant"
        else:
            code.entry["invariant"] = "None"

        if hx_live:
            lines = [f"def {self.fname}_hoisted(p, inv, {x}):"] + docstring(
                f"{title}: values of inputs and parameters only, for every step at once.", "    ")
            for ins in hx_live:
                lines += self._instr_lines(ins, "hoisted")
            needed = self._used_by(body_live, hx_names, ends)
            lines.append(self._dict_return([f"{py_str(n)}: {self.local[n]}" for n in needed]))
            code.functions.append("\n".join(lines))
            code.entry["hoisted"] = f"{self.fname}_hoisted"
        else:
            code.entry["hoisted"] = "None"

        sig = ", ".join(["p", "inv", "hx", x] + states)
        state_list = ", ".join(f"{s.name}'" for s in cell.states)
        state_list += "," if len(cell.states) == 1 else ""
        summary = f'    """{doc_text(title)} at one time step: (output, ({doc_text(state_list)})).'
        lines = call(f"def {self.fname}_step", sig.split(", "), tail=":")  # many states: split
        if len(summary) <= WIDTH:
            lines += [summary, ""]
        else:  # the state names on lines of their own
            lines += [f'    """{doc_text(title)} at one time step: (output, next state).', ""]
            lines += _wrap_equation(f"next state: ({state_list})", 4) + [""]
        for eq in cell.equations:
            lines += _wrap_equation(eq, 4)
        lines.append('    """')
        for ins in body_live:
            lines += self._instr_lines(ins, "body")
        nxt = dict(cell.next_state)
        new = [self.ref(nxt[s.name], "body") for s in cell.states]
        new_t = "(" + ", ".join(new) + ("," if len(new) == 1 else "") + ")"
        ret = f"    return {self.ref(cell.output, 'body')}, {new_t}"
        if len(ret) > WIDTH:
            # ruff explodes the returned pair one element a line (it never hugs a tuple the
            # way it hugs call arguments); the new state is a tuple (lax.scan's carry)
            inner = "        "
            seq = Seq(new, tuple=True)
            flat = f"{inner}{seq},"
            state_lines = [flat] if len(flat) <= WIDTH else (
                [f"{inner}("] + [f"{inner}    {n}," for n in new] + [f"{inner}),"])
            ret = "\n".join(["    return (", f"{inner}{self.ref(cell.output, 'body')},",
                             *state_lines, "    )"])
        lines.append(ret)
        code.functions.append("\n".join(lines))
        code.entry["step"] = f"{self.fname}_step"

        reads_x = cell.inputs[0].name in ends or any(
            cell.inputs[0].name in i.args for i in body_live
        )
        code.entry["reads_x"] = repr(reads_x)
        return code


# ----------------------------------------------------------------------- module


def _describe(model: Model) -> str:
    enc = model.input
    if enc.kind == "onehot":
        parts = [f"input onehot (vocab {enc.vocab})"]
    elif enc.kind == "embedding":
        parts = [f"input embedding (vocab {enc.vocab}, dim {enc.size})"]
    else:
        parts = [f"input dense ({enc.size} features)"]
    for layer in model.layers:
        d = {("fwd",): "", ("bwd",): " backward", ("fwd", "bwd"): f" bidirectional {layer.merge}"}
        extra = d[layer.directions] + (" residual" if layer.residual else "")
        parts.append(f"{layer.name}: {layer.cell.name} {layer.cell.output_size}{extra}")
    head = model.head
    parts.append(f"head {head.kind} {head.at} ({head.output_size})")
    return " -> ".join(parts)


class ModuleEmitter(ModuleEmitterBase):
    """Writes the module for one program; `unroll` is lax.scan's unroll factor; with `vjp`
    (the default) each layer is differentiated by its whole-sequence custom VJP
    (:mod:`.vjpgen`), without it by JAX's autodiff through lax.scan."""

    package = __package__
    clip_only_set = True

    def __init__(
        self,
        program: Program,
        unroll: int | None = None,
        vjp: bool = True,
        layout: str = "auto",
    ):
        super().__init__(program)
        self.vjp = vjp
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.layout = layout
        self.unroll = dict(UNROLL) if unroll is None else {k: int(unroll) for k in UNROLL}
        self.plan = program.train
        self.sections = self.template_sections()
        model = self.model
        # a layer that runs backward in time needs the whole sequence: no step()
        self.backward = any("bwd" in layer.directions for layer in model.layers)
        plan = self.plan
        self.k1 = plan.k1 if plan is not None else None
        self.k2 = plan.k2 if plan is not None else None
        self.windows = self.k1 is not None
        self.lazy_tokens = vjp and lazy_tokens_ok(model)
        self.vjp_entries: dict[str, dict[str, Any]] = {}  # by layer, filled by cells()

    def feature_major(self, cell: Cell, grad: CellGrad) -> tuple[bool, int | None]:
        """(whether to emit the cell's feature-major step functions as well, up to which
        batch size the training objectives run them: 0 never (forward only), None at
        every size): see :class:`.vjpgen.FeatureMajorVjpCode`, :data:`LAYOUTS` and
        :func:`fm_max_batch`."""
        if not self.vjp or self.layout == "batch" or not FeatureMajorVjpCode.supports(cell, grad):
            return False, 0
        if self.layout == "feature":
            return True, None
        train = fm_max_batch(cell)
        return train != 0 or fm_max_batch(cell, training=False) != 0, train

    # -- the constants' data where it differs from the NumPy module's
    def spec_data(self) -> Any:
        return None if self.program.spec_data is None else plain(self.program.spec_data)

    # -- pieces
    def header(self) -> str:
        prog = self.program
        src = prog.source_name or "<spec>"
        shown = src if clean(src) == src else repr(src)
        if len(f"# Generated by rnnc {_version()} from {shown} -- DO NOT EDIT.") > WIDTH:
            # a long path: its file name keeps the header within the line length
            name = src.replace("\\", "/").rsplit("/", 1)[-1]
            shown = name if clean(name) == name else repr(name)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
        out = f"{_ident(self.model.name)}_jax.py"
        regen = f"rnnc compile {shlex.quote(shown)} --backend jax -o {out}"
        lines = [
            f"# Generated by rnnc {_version()} from {shown} -- DO NOT EDIT.",
            f"# spec_sha256: {_ident(prog.spec_hash)}  backend: jax",
            f"# Regenerate with: {regen}",
        ]
        if len(lines[-1]) > WIDTH:
            lines[-1:] = ["# Regenerate with:", f"#   {regen}"]
        return "\n".join(lines)

    def docstring(self) -> str:
        model = self.model
        lines = [
            f'"""{doc_text(model.name)}: a recurrent network generated by rnnc (JAX backend).',
            "",
        ]
        lines += textwrap.wrap(doc_text(_describe(model)), WIDTH, break_on_hyphens=False)
        for layer in model.layers:
            lines += ["", f"{doc_text(layer.name)} ({doc_text(layer.cell.name)}):"]
            for eq in layer.cell.equations:
                lines += _wrap_equation(eq, 4)
        step = ("step (refused here: a layer runs backward in time)" if self.backward else
                "step, prepare_step (params made ready for step)")
        api = ("API (batch-major arrays; see docs/generated-module.md): init_params, "
               f"initial_state, {step}, forward, loss_and_grad, init_opt_state, train_step; "
               "make_mesh, shard_batch and replicate for data-parallel training over several "
               "devices.")
        lines += ["", *textwrap.wrap(api, WIDTH, break_on_hyphens=False), '"""']
        return "\n".join(lines)

    def constants(self) -> str:
        model = self.model
        out = [
            "# The normalised spec, as plain data.",
            assign("SPEC", self.spec_data()),
            f"SPEC_SHA256 = {py_str(self.program.spec_hash)}",
            "# The spec's dtype: the default of init_params and initial_state (float64 needs",
            "# jax_enable_x64; without it JAX makes float32 arrays).",
            f"DTYPE = {py_str(self.dtype())}",
            "# Parameter shapes, in the order init_params draws them.",
            assign("PARAM_SHAPES", self.param_shapes()),
            "# name: (initialiser, arguments, fan_in, fan_out)",
            assign("PARAM_INITS", self.param_inits()),
            "# State sizes (without the batch axis).",
            assign("STATE_SHAPES", self.state_shapes()),
            assign("MODEL", self.model_summary()),
            assign("TRAIN", self.train_summary()),
        ]
        drop: dict[str, tuple[float, int]] = {}
        if model.input_dropout > 0:
            drop["input"] = (model.input_dropout, model.input.size)
        for layer in model.layers:
            if layer.dropout > 0:
                drop[layer.name] = (layer.dropout, layer.output_size)
        if model.output_dropout > 0:
            drop["output"] = (model.output_dropout, model.layers[-1].output_size)
        out += [
            "",
            "# Width of the encoded input vectors.",
            f"INPUT_SIZE = {model.input.size}",
            "# Dropout while training: {place: (rate, width)}.",
            assign("DROPOUT", drop),
            "# lax.scan unroll factor, by platform (jax.default_backend()).",
            assign("UNROLL", self.unroll),
            "# Whether the custom VJP's loops run feature-major ((n, B) values) where a cell",
            "# has such step functions, by platform (faster on CPU for wide layers:",
            "# docs/performance.md). Set an entry to False before the first call to compare.",
            assign("FEATURE_MAJOR", FEATURE_MAJOR),
        ]
        if self.windows:
            out += [
                "# Truncated BPTT: every K1 steps, backpropagate through K2 steps.",
                f"K1 = {self.k1}",
                f"K2 = {self.k2}",
                "# States of the directions that run backward in time: they enter each window",
                "# at its last step, from the (constant) state the later steps left.",
                assign("REVERSED_STATES", self.reversed_states()),
            ]
        out += [
            "# The updater, learning-rate schedule, clipping and L1/L2 of train_step.",
            assign("UPDATER", self.updater()),
            assign("SCHEDULE", self.schedule()),
            assign("CLIP", self.clip()),
            f"L1 = {self.l1_l2()[0]!r}",
            f"L2 = {self.l1_l2()[1]!r}",
        ]
        return "\n".join(out)

    def cells(self) -> tuple[list[str], str]:
        functions: list[str] = []
        entries: dict[str, dict[str, str]] = {}
        vjps: dict[str, dict[str, Any]] = {}
        used: set[str] = set()
        for layer in self.model.layers:
            fname = _ident(f"{layer.name}_{layer.cell.name}")
            while fname in used:
                fname += "_"
            used.add(fname)
            code = _CellEmitter(layer, fname).emit()
            functions.extend(code.functions)
            entries[layer.name] = code.entry
            if self.vjp:
                cell = sink_cheap_hoisted(layer.cell)
                grad = remat_cheap_saved(verify_grad(autodiff(cell)))
                vjp = VjpCellCode(cell, f"{fname}_vjp", grad)
                functions.extend("\n".join(vjp.source()).strip("\n").split("\n\n\n"))
                vjps[layer.name] = vjp.entry()
                emit_fm, train = self.feature_major(cell, grad)
                if emit_fm:
                    fm = FeatureMajorVjpCode(cell, f"{fname}_vjp", grad)
                    functions.extend("\n".join(fm.source()).strip("\n").split("\n\n\n"))
                    vjps[layer.name]["feature_major"] = dict(
                        fm.entry(), train_max_batch=train
                    )
        self.vjp_entries = vjps
        table = [
            "# Each layer's cell: its parameter and state names and its functions.",
            "CELLS = {",
        ]
        for layer in self.model.layers:
            e = entries[layer.name]
            table.append(f"    {py_str(layer.name)}: {{")
            for key, names in (("params", layer.cell.params), ("states", layer.cell.states)):
                table += literal(tuple(v.name for v in names), f"{py_str(key)}: ", ",", " " * 8)
            for key in ("invariant", "hoisted", "step", "reads_x"):
                table.append(f"        {py_str(key)}: {e[key]},")
            if layer.name in vjps:
                table += _vjp_table(vjps[layer.name])
            table.append("    },")
        table.append("}")
        return functions, "\n".join(table)

    def encode(self) -> str:
        dense = self._encode_dense("def _encode(params, xs, dtype):\n")
        if self.lazy_tokens:
            return dense + (
                "\n\n\ndef _encode_for_training(params, xs, dtype):\n"
                '    """The inputs of forward and the training objectives: the token ids,\n'
                '    time-major, as lazy one-hot vectors (_Tokens); ids given as floats, as their\n'
                '    one-hot vectors."""\n'
                "    xs = jnp.asarray(xs)\n"
                "    if not jnp.issubdtype(xs.dtype, jnp.integer):\n"
                "        return _encode(params, xs, dtype)\n"
                f"    return _Tokens(jnp.swapaxes(xs, 0, 1), {self.model.input.vocab}, dtype)"
            )
        return dense + (
            "\n\n\n# The inputs of forward and the training objectives: the same encoding.\n"
            "_encode_for_training = _encode\n"
            "# Lazy input types (none here: see _Tokens in docs/jax.md).\n"
            "_LAZY = ()"
        )

    def _encode_dense(self, head: str) -> str:
        enc = self.model.input
        if enc.kind == "onehot":
            return head + (
                f'    """Token ids (B, T) -> time-major one-hot vectors (T, B, {enc.vocab})."""\n'
                f"    return jax.nn.one_hot(jnp.swapaxes(xs, 0, 1), {enc.vocab}, dtype=dtype)"
            )
        if enc.kind == "embedding":
            return head + (
                f'    """Token ids (B, T) -> time-major embeddings E[ids] (T, B, {enc.size}).\n'
                "\n"
                "    An id outside [0, vocab) reads a zero vector, as a one-hot input does (JAX\n"
                "    cannot refuse it while tracing; plain indexing would clamp or wrap it).\n"
                '    """\n'
                "    ids = jnp.swapaxes(jnp.asarray(xs), 0, 1)\n"
                '    table = params["input.E"]\n'
                "    ids = jnp.where(ids < 0, table.shape[0], ids)\n"
                '    return jnp.take(table, ids, axis=0, mode="fill", fill_value=0)'
            )
        return head + (
            f'    """Features (B, T, {enc.size}) -> time-major (T, B, {enc.size})."""\n'
            "    return jnp.swapaxes(xs, 0, 1).astype(dtype)"
        )

    def layers(self) -> str:
        lines = [
            "def _layers(params, x, state, valid, resets, drop, detach_every=None, collect=False, "
            "vjp=False):",
            '    """All layers over time-major inputs x (T, B, F).',
            "",
            "    Returns (top-layer outputs (T, B, n), final state, and with `collect` the state",
            "    after every step). `drop` holds the dropout multipliers (None: no dropout).",
            "    With `vjp` each layer is differentiated by its whole-sequence custom VJP.",
            '    """',
            "    final, seq = {}, {}",
            "",
            "    def run(layer, prefix, x, reverse=False):",
            "        cell = CELLS[layer]",
            "        y, s, s_seq = _run_direction(",
            "            cell, params, prefix, x, state, valid, resets, reverse, detach_every, "
            "collect, vjp",
            "        )",
            "        final.update(s)",
            "        seq.update(s_seq)",
            "        return y",
            "",
            '    x = _dropout(x, drop, "input")',
        ]
        for layer in self.model.layers:
            name = py_str(layer.name)
            lines.append(comment(self._layer_note(layer), "    "))
            if layer.bidirectional:
                lines.append(_call("y_fwd = run", [name, py_str(layer.prefix("fwd")), "x"]))
                lines.append(
                    _call("y_bwd = run", [name, py_str(layer.prefix("bwd")), "x", "reverse=True"])
                )
                if layer.merge == "concat":
                    lines.append("    y = jnp.concatenate([y_fwd, y_bwd], axis=-1)")
                else:
                    lines.append("    y = y_fwd + y_bwd")
            else:
                reverse = ["reverse=True"] if layer.directions == ("bwd",) else []
                lines.append(
                    _call(
                        "y = run",
                        [name, py_str(layer.prefix(layer.directions[0])), "x"] + reverse,
                    )
                )
            if layer.residual:
                first = self.lazy_tokens and layer is self.model.layers[0]
                lines.append("    y = y + _dense(x)" if first else "    y = y + x")
            if layer.dropout > 0:
                lines.append(f"    x = _dropout(y, drop, {name})")
            else:
                lines.append("    x = y")
        lines.append("    return x, final, seq")
        return "\n".join(lines)

    @staticmethod
    def _layer_note(layer: Layer) -> str:
        d = {
            ("fwd",): "forward",
            ("bwd",): "backward",
            ("fwd", "bwd"): f"bidirectional, {layer.merge}",
        }[layer.directions]
        extra = ", residual" if layer.residual else ""
        return f"{layer.name}: {layer.cell.name}, {d}{extra}"

    def layers_step(self) -> str:
        lines = [
            "def _layers_step(params, x, state):",
            '    """All layers at one time step: (top-layer output (B, n), next state)."""',
            "    new = {}",
        ]
        for layer in self.model.layers:
            lines.append(comment(self._layer_note(layer), "    "))
            lines.append(
                _call(
                    "y, s = _step_direction",
                    [
                        f"CELLS[{py_str(layer.name)}]",
                        "params",
                        py_str(layer.prefix(layer.directions[0])),
                        "x",
                        "state",
                    ],
                )
            )
            lines.append("    new.update(s)")
            if layer.residual:
                # step() of prepare_step's parameters gives a first layer token ids (_Tokens)
                first = self.lazy_tokens and layer is self.model.layers[0]
                lines.append("    x = y + _dense(x)" if first else "    x = y + x")
            else:
                lines.append("    x = y")
        lines.append("    return x, new")
        return "\n".join(lines)

    def head(self) -> str:
        head = self.model.head
        affine = 'h @ params["head.W"].T + params["head.b"]'
        out = []
        if head.kind == "softmax":
            out.append(
                "def _predict(params, h):\n"
                '    """Head outputs for features h (..., n): softmax of logits h @ W.T + b."""\n'
                f"    return jax.nn.softmax({affine}, axis=-1)"
            )
            losses = f"""def _losses(params, h, y):
    \"\"\"Cross-entropy -log softmax(z)[y] = logsumexp(z) - z[y] at every position of h,
    z = h @ W.T + b. Written out rather than log_softmax and take_along_axis: z[y]
    is a sum of z masked by y == class index, which fuses with the other element-wise
    work (no gather, and no scatter in the gradient), so XLA compiles fewer kernels.
    A class id outside -1 .. C-1 (in a jax.Array or traced ys, which the host does not
    read) gives a NaN loss at its step, and no gradient, rather than a score.
    \"\"\"
    z = {affine}
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(z - top), axis=-1)) + top[..., 0]
    hit = y[..., None] == jnp.arange(z.shape[-1])
    loss = lse - jnp.sum(z * hit.astype(z.dtype), axis=-1)
    return jnp.where((y < -1) | (y >= z.shape[-1]), jnp.nan, loss)"""
            out.append(losses)
            out.append(
                "def _scored(ys):\n"
                '    """Whether each target is scored: a class id -1 is not."""\n'
                "    return ys != -1"
            )
        else:
            out.append(
                "def _predict(params, h):\n"
                '    """Head outputs for features h (..., n): the values h @ W.T + b."""\n'
                f"    return {affine}"
            )
            out.append(
                "def _losses(params, h, y):\n"
                '    """Squared error (prediction - y)^2 averaged over the output features."""\n'
                "    return jnp.mean(jnp.square(_predict(params, h) - y), axis=-1)"
            )
            out.append(
                "def _scored(ys):\n"
                '    """None: every target (a value) is scored."""\n'
                "    return None"
            )
        if head.at == "per_step":
            out.append(
                "def _targets(ys, T):\n"
                '    """Per-step targets, time-major: (T, B) or (T, B, Y)."""\n'
                "    return jnp.swapaxes(ys, 0, 1)"
            )
            out.append(
                "def _readout(params, top, lengths):\n"
                '    """Head outputs at every step, batch-major (B, T, out)."""\n'
                "    return jnp.swapaxes(_predict(params, top), 0, 1)"
            )
            if self.windows:
                out.append(
                    "def _loss_weights(lengths, T, B):\n"
                    '    """(T, B) bools: the steps whose loss counts (t < lengths[b])."""\n'
                    "    if lengths is None:\n"
                    "        return jnp.ones((T, B), bool)\n"
                    "    return _valid(lengths, T)"
                )
        else:
            out.append(self.sections["last"].strip("\n"))
            out.append(
                "def _readout(params, top, lengths):\n"
                '    """Head outputs at each row\'s last valid step, (B, out)."""\n'
                "    return _predict(params, _last(top, lengths))"
            )
            if self.windows:
                out.append(
                    "def _targets(ys, T):\n"
                    '    """Each row\'s target repeated at every step, time-major."""\n'
                    "    return jnp.broadcast_to(ys[None], (T,) + ys.shape)"
                )
                out.append(
                    "def _loss_weights(lengths, T, B):\n"
                    '    """(T, B) bools: each row\'s last valid step, t = lengths[b] - 1."""\n'
                    "    last = jnp.full((B,), T - 1) if lengths is None else lengths - 1\n"
                    "    return jnp.arange(T)[:, None] == last[None, :]"
                )
        return "\n\n\n".join(out)

    def reversed_states(self) -> tuple[str, ...]:
        """The state keys of every direction that runs backward in time."""
        return tuple(
            layer.prefix("bwd") + v.name
            for layer in self.model.layers
            if "bwd" in layer.directions
            for v in layer.cell.states
        )

    def uses_backward_helpers(self) -> bool:
        ops = {i.op for layer in self.model.layers for i in layer.cell.instrs}
        return bool(ops & {"outer", "bsum", "pad"})

    # -- the whole module
    def emit(self) -> str:
        s = self.sections
        blocks: list[str] = []
        blocks.append(
            self.header() + "\n" + self.docstring() + "\n\n"
            "import functools\n"
            "import gc\n\n"
            "import jax\n"
            "import jax.extend.backend\n"
            "import jax.numpy as jnp\n"
            "import numpy as np\n"
            "from jax.sharding import Mesh, NamedSharding, PartitionSpec\n\n"
        )
        blocks.append(self.constants())
        blocks.append(self.runtime_source() + "\n\n\n_runtime_init_opt_state = init_opt_state")
        blocks.append("# " + "-" * 30 + " model " + "-" * 30)
        functions, table = self.cells()
        blocks.extend(functions)
        blocks.append(table)
        blocks.append(self.encode())
        blocks.append(self.layers())
        if not self.backward:
            blocks.append(self.layers_step())
        blocks.append(self.head())
        if self.uses_backward_helpers() or self.vjp:
            blocks.append(RUNTIME_HELPERS.format(xp="jnp").strip("\n"))
        if self.vjp:
            blocks.append(VJP_HELPERS.strip("\n"))
        if any("feature_major" in v for v in self.vjp_entries.values()):
            blocks.append(FM_HELPERS.strip("\n"))
        blocks.append(INPUT_CHECKS.strip("\n"))
        blocks.append("# " + "-" * 28 + " run and train " + "-" * 28)
        blocks.append(s["init"])
        blocks.append(s["run"])
        blocks.append(s["masked_mean"])
        if self.model.head.at == "last":
            blocks.append(s["objective_last"])
        else:
            blocks.append(s["objective_per_step"])
        if self.windows:
            blocks.append(s["objective_truncated"])
            blocks.append(s["windows"])
        else:
            blocks.append(s["objective_full"])
        if self.lazy_tokens:
            blocks.append(s["lazy_tokens"])
        blocks.append(s["entry"])
        blocks.append("\n".join(step_refusal(self.model)) if self.backward else s["step"])
        blocks.append(s["mesh"])
        return "\n\n\n".join(b.strip("\n") for b in blocks) + "\n"


def lazy_tokens_ok(model: Model) -> bool:
    """Whether the training objectives can give the first layer its one-hot inputs as
    lazy token ids (template _Tokens): a one-hot input, and a first-layer cell whose
    custom-VJP hoisted section uses the input only as the right operand of matmuls whose
    results only the step reads (so W x is W.T[ids], gathered inside the loop)."""
    if model.input.kind != "onehot":
        return False
    cell = sink_cheap_hoisted(model.layers[0].cell)
    x = cell.inputs[0].name
    products = set()
    for ins in cell.hoisted:
        if x in ins.args:
            if ins.op != "matmul" or ins.args[0] == x:
                return False
            products.add(ins.name)
        elif products & set(ins.args):
            return False
    return not products & ({cell.output} | {v for _, v in cell.next_state})


def assign(name: str, v: Any) -> str:
    """`name = <literal>` (one statement, possibly several lines)."""
    return "\n".join(literal(v, f"{name} = "))


def _call(head: str, args: Sequence[Any]) -> str:
    """`head(args)` at indent 4, split the way ruff splits a long call."""
    return "\n".join(call(head, args, "    "))


def _vjp_table(entry: dict[str, Any]) -> list[str]:
    """The "vjp" item of a CELLS entry: function names unquoted, the rest as literals."""
    return _fn_table("vjp", entry, " " * 8)


def _fn_table(name: str, entry: dict[str, Any], indent: str) -> list[str]:
    """`"name": {...},` at `indent`: string values as bare (function) names."""
    lines = [f"{indent}{py_str(name)}: {{"]
    inner = indent + " " * 4
    for key, v in entry.items():
        if isinstance(v, str):
            lines.append(f"{inner}{py_str(key)}: {v},")
        elif isinstance(v, dict) and any(isinstance(f, str) for f in v.values()):
            lines += _fn_table(key, v, inner)
        else:
            lines += literal(v, f"{py_str(key)}: ", ",", inner)
    return lines + [f"{indent}}},"]


def emit(
    program: Program, unroll: int | None = None, vjp: bool = True, layout: str = "auto"
) -> str:
    """The generated module's source text for `program` (see :class:`ModuleEmitter`)."""
    return ModuleEmitter(program, unroll, vjp, layout).emit()
