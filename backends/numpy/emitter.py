"""The NumPy backend: one standalone module per program, with generated BPTT.

The module follows ``docs/generated-module.md``. Its parts, in file order:

1. header, docstring (the model and each cell's equations), imports;
2. constants (``SPEC``, ``PARAM_SHAPES`` ... ``TRAIN``, the training settings);
3. model-independent helpers, pasted from ``template.py``;
4. per distinct cell, the functions of :mod:`.cellgen` (forward step, backward
   step, the time loops and the once-per-call sections);
5. the model's wiring, written here: input encoding, layers (directions,
   merge, residual, dropout), head, loss, and ``loss_and_grad``'s window loop
   for truncated BPTT;
6. the training-update runtime (``runtime_optim.py`` after its marker,
   verbatim) and ``init_opt_state`` / ``train_step`` on top of it.

Emitters print code; semantics live in the IR and its passes (the cell's
backward is the autodiff pass's output, printed line by line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import rnnc
from rnnc.ir.nodes import Cell, Layer, Program
from rnnc.ir.passes.autodiff import autodiff, verify_grad

from ..common import INPUT_CHECKS, ModuleEmitterBase, step_refusal
from ..pyfmt import WIDTH, call, comment, docstring, literal, py_str, wrap
from .cellgen import I1, I2, I3, CellCode


@dataclass
class _Dir:
    """One direction of one layer, as the wiring code sees it."""

    layer: Layer
    direction: str
    code: CellCode

    @property
    def prefix(self) -> str:
        return self.layer.prefix(self.direction)

    @property
    def key(self) -> str:
        return self.prefix[:-1]

    @property
    def reverse(self) -> bool:
        return self.direction == "bwd"


def ruff_format(text: str) -> str:
    """``text`` through ``ruff format`` (line length 100) if ruff can be found, else as is.

    The emitter prints ruff-formatted code itself; only statements that long names
    from the spec push past the line length are left for ruff to wrap.
    """
    import shutil
    import subprocess

    exe = None
    try:
        from ruff.__main__ import find_ruff_bin

        exe = find_ruff_bin()
    except (ImportError, FileNotFoundError):
        exe = shutil.which("ruff")
    if exe is None:
        return text
    cmd = [exe, "format", "--isolated", "--line-length", str(WIDTH), "--stdin-filename",
           "generated.py", "-"]
    try:
        done = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return text
    return done.stdout if done.returncode == 0 and done.stdout else text


class NumpyEmitter(ModuleEmitterBase):
    package = __package__
    format_long = True  # wrap over-long lines with ruff (see ruff_format)

    def __init__(self, program: Program):
        super().__init__(program)
        self.cells: list[tuple[Cell, CellCode]] = []
        taken = {"forward", "step", "loss_and_grad", "train_step", "init_params",
                 "initial_state", "init_opt_state", "learning_rate", "clip_gradients",
                 "regularize", "apply_updates", "regularization_loss"}
        for layer in self.model.layers:
            if self._code(layer.cell) is None:
                base = layer.cell.name
                prefix = base
                n = 1
                while any(f"{prefix}_{f}" in taken for f in ("step", "forward", "backward")) \
                        or prefix in {c.fn for _, c in self.cells}:
                    n += 1
                    prefix = f"{base}{n}" if n > 1 else base
                    if any(f"{prefix}_{f}" in taken for f in ("step",)):
                        prefix = f"{base}_cell{n}"
                grad = verify_grad(autodiff(layer.cell))
                self.cells.append((layer.cell, CellCode(layer.cell, prefix, grad)))
        self.dirs = [_Dir(layer, d, self._code(layer.cell)) for layer in self.model.layers
                     for d in layer.directions]
        self.has_bwd = any(d.reverse for d in self.dirs)

    def _code(self, cell: Cell) -> CellCode | None:
        for c, code in self.cells:
            if c == cell:
                return code
        return None

    # ------------------------------------------------------------ top level
    def emit(self) -> str:
        parts: list[list[str]] = [
            self.header(),
            ["import math", "", "import numpy as np"],
            self.constants(),
        ]
        sections = self.template_sections()
        parts.append(sections["init"].split("\n"))
        parts.append(sections["helpers"].split("\n"))
        parts.append(INPUT_CHECKS.strip("\n").split("\n"))
        for _, code in self.cells:
            parts.append(self.cell_banner(code) + code.source()[2:])
        parts.append(self.encode())
        parts.append(self.dropout_masks())
        parts.append(self.layers_forward())
        head = "softmax" if self.model.head.kind == "softmax" else "linear"
        parts.append(sections[head].split("\n"))
        parts.append(self.forward_fn())
        parts.append(self.step_fn())
        parts.append(self.loss_and_grad_fn())
        parts.append(self.runtime_source().split("\n"))
        parts.append(self.train_fns())
        out: list[str] = []
        for i, p in enumerate(parts):
            if i == 1:
                out += [""]
            elif i == 2:
                out += ["", ""]
            elif i > 2:
                out += ["", ""]
            out += p
        text = "\n".join(line.rstrip() for line in out) + "\n"
        if self.format_long and max(len(line) for line in text.splitlines()) > WIDTH:
            text = ruff_format(text)
        return text

    def cell_banner(self, code: CellCode) -> list[str]:
        title = f" cell {code.cell.name} "
        return [f"# {'-' * 30}{title}".ljust(WIDTH - 20, "-"), "", ""]

    # ---------------------------------------------------------------- header
    def header(self) -> list[str]:
        src = self.program.source_name or "<spec>"
        src = "".join(ch if ch.isprintable() else "?" for ch in src)
        if len(src) > 50:
            src = "..." + src[-47:]
        stem = re.sub(r"\.(rnn|ya?ml)$", "", src.rsplit("/", 1)[-1])
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"
        lines = [
            f"# Generated by rnnc {rnnc.__version__} from {src} -- DO NOT EDIT.",
            f"# spec_sha256: {self.program.spec_hash}  backend: numpy",
        ]
        # the command on the header line, or on a line of its own, or shortened, to fit
        for out in (f"{stem}_numpy.py", "model_numpy.py"):
            regen = f"rnnc compile {src} --backend numpy -o {out}"
            for cand in ([f"# Regenerate with: {regen}"], ["# Regenerate with:", f"#   {regen}"]):
                if max(len(c) for c in cand) <= WIDTH:
                    return lines + cand + docstring(self.module_doc())
        lines.append("# Regenerate with: rnnc compile <spec> --backend numpy -o <file>")
        return lines + docstring(self.module_doc())

    def module_doc(self) -> str:
        m = self.model
        enc = m.input
        if enc.kind == "onehot":
            inp = f"one-hot tokens (vocab {enc.vocab})"
        elif enc.kind == "embedding":
            inp = f"token embeddings (vocab {enc.vocab}, dim {enc.size})"
        else:
            inp = f"dense features ({enc.size})"
        lines = [f"{m.name}: a recurrent network compiled by rnnc (NumPy backend).", ""]
        lines.append(f"Input: {inp}.")
        for layer in m.layers:
            dirs = {("fwd",): "forward", ("bwd",): "backward"}.get(
                layer.directions, f"bidirectional, {layer.merge}")
            extra = ", residual" if layer.residual else ""
            if layer.dropout:
                extra += f", dropout {layer.dropout}"
            lines.append(f"Layer {layer.name}: {layer.cell.name}, {layer.input_size} -> "
                         f"{layer.output_size}, {dirs}{extra}.")
            for eq in self._code(layer.cell).equations():
                lines += wrap(eq, WIDTH - 8, "    ", "        ")
        h = m.head
        loss = "cross-entropy" if h.kind == "softmax" else "squared error"
        at = "every step" if h.at == "per_step" else "the last valid step"
        lines.append(f"Head: {h.kind} at {at}, {h.input_size} -> {h.output_size}; "
                     f"loss: mean {loss}.")
        t = self.train
        if t is not None and t.k1 is not None:
            lines.append(f"Truncated BPTT: every {t.k1} steps, back through {t.k2} steps.")
        lines += [
            "",
            "Arrays are batch-major at the interface, (B, T, ...); inside, the time loops run",
            "time-major, (T, B, ...), so that each step reads contiguous rows. Gradients come",
            "from generated BPTT: each cell's backward step is the IR's autodiff, line by line.",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------- constants
    def constants(self) -> list[str]:
        t = self.train
        out: list[str] = []
        spec = self.spec_data()
        out += literal(spec, "SPEC = ")
        out.append(f"SPEC_SHA256 = {py_str(self.program.spec_hash)}")
        out.append(f"DTYPE = {py_str(self.dtype())}")
        out += literal(self.param_shapes(), "PARAM_SHAPES = ")
        out += literal(self.param_inits(), "PARAM_INITS = ")
        out += literal(self.state_shapes(), "STATE_SHAPES = ")
        out += literal(self.model_summary(), "MODEL = ")
        out += literal(self.train_summary(), "TRAIN = ")
        k1 = t.k1 if t is not None else None
        k2 = t.k2 if t is not None else None
        out.append(f"K1, K2 = {k1!r}, {k2!r}  # truncated BPTT (None: full BPTT)")
        out += literal(self.updater(), "UPDATER = ")
        out += literal(self.schedule(), "SCHEDULE = ")
        out += literal(self.clip(), "CLIP = ")
        l1, l2 = self.l1_l2()
        out.append(f"L1, L2 = {float(l1)!r}, {float(l2)!r}")
        return out

    # ---------------------------------------------------------------- wiring
    def encode(self) -> list[str]:
        enc = self.model.input
        out = ["def _encode(params, xs, dtype):"]
        if enc.kind == "onehot":
            out += docstring(f"The encoded input, time-major (T, B, {enc.size}): one-hot "
                             "vectors of the token ids.", I1)
            # written in place: indexing np.eye(vocab) built a vocab x vocab matrix per call
            out.append(f"{I1}ids = np.asarray(xs).T")
            out.append(f"{I1}x = np.zeros(ids.shape + ({enc.vocab},), dtype=dtype)")
            out.append(f"{I1}np.put_along_axis(x, ids[..., None], 1, axis=-1)")
            out.append(f"{I1}return x")
        elif enc.kind == "embedding":
            out += docstring(f"The encoded input, time-major (T, B, {enc.size}): rows of "
                             "the embedding input.E.", I1)
            out.append(f'{I1}return params["input.E"][np.asarray(xs).T]')
        else:
            out += docstring(f"The input features, time-major (T, B, {enc.size}), in the "
                             "computation dtype.", I1)
            out.append(f"{I1}return np.ascontiguousarray(np.swapaxes(xs, 0, 1), dtype=dtype)")
        return out

    def drop_places(self) -> list[tuple[str, float, int]]:
        m = self.model
        places = []
        if m.input_dropout:
            places.append(("input", m.input_dropout, m.input.size))
        for la in m.layers:
            if la.dropout:
                places.append((la.name, la.dropout, la.output_size))
        if m.output_dropout:
            places.append(("output", m.output_dropout, m.layers[-1].output_size))
        return places

    def dropout_masks(self) -> list[str]:
        out = ["def _dropout_masks(rng, B, T, dtype):"]
        out += docstring("Inverted-dropout multipliers, time-major, drawn from rng in a fixed "
                         "order:\nthe input, each layer's output, the last layer's output "
                         "before the head.", I1)
        places = self.drop_places()
        if not places:
            out.append(f"{I1}return {{}}")
            return out
        out.append(f"{I1}return {{")
        for name, rate, width in places:
            out += call(f"{I2}{py_str(name)}: _dropout_mask",
                        ["rng", repr(float(rate)), f"(B, T, {width})", "dtype"], "", ",")
        out.append(f"{I1}}}")
        return out

    def layers_forward(self) -> list[str]:
        m = self.model
        out = ["def _layers_forward(params, x, state, m, drop=None, tapes=None):"]
        out += docstring(
            f"Every layer over the whole sequence x (T, B, {m.input.size}), time-major.\n\n"
            "m: the masks of _masks; drop: dropout multipliers (training) or None; tapes: a "
            "dict\nthat receives each layer direction's tape, or None. Returns the input of "
            f"the head\n(T, B, {m.layers[-1].output_size}) and the final state.", I1)
        out.append(f'{I1}keep, valid = m["keep"], m["valid"]')
        out.append(f"{I1}final = {{}}")
        drops = {n for n, _, _ in self.drop_places()}
        if "input" in drops:
            out.append(f"{I1}if drop is not None:")
            out.append(f'{I2}x = x * drop["input"]')
        for la in m.layers:
            out.append(comment(self.layer_title(la), I1))
            ys = []
            for d in [x for x in self.dirs if x.layer is la]:
                y = "y" if not la.bidirectional else ("yf" if d.direction == "fwd" else "yb")
                ys.append(y)
                states = [d.prefix + v.name for v in la.cell.states]
                s0 = ", ".join(f"state[{py_str(s)}]" for s in states)
                out.append(f"{I1}s0 = ({s0}{',' if len(states) == 1 else ''})")
                out += call(f"{I1}{y}, s = {d.code.fns['forward']}", [
                    f"_sub(params, {py_str(d.prefix)})", "x", "s0", "keep", "valid",
                    str(d.reverse), f"_tape(tapes, {py_str(d.key)})"])
                lhs = ", ".join(f"final[{py_str(s)}]" for s in states)
                if len(states) == 1:
                    lhs = f"({lhs},)"
                out.append(f"{I1}{lhs} = s")
            if la.bidirectional:
                if la.merge == "concat":
                    out.append(f"{I1}y = np.concatenate([yf, yb], axis=-1)")
                else:
                    out.append(f"{I1}y = yf + yb")
            if la.residual:
                out.append(f"{I1}y = y + x  # residual: the layer adds its input")
            if la.name in drops:
                out.append(f"{I1}if drop is not None:")
                out.append(f"{I2}y = y * drop[{py_str(la.name)}]")
            out.append(f"{I1}x = y")
        if "output" in drops:
            out.append(f"{I1}if drop is not None:")
            out.append(f'{I2}x = x * drop["output"]')
        out.append(f"{I1}return x, final")
        return out

    def layer_title(self, la: Layer) -> str:
        dirs = {("fwd",): "forward in time", ("bwd",): "backward in time"}.get(
            la.directions, f"both directions, merged by {la.merge}")
        return f"{la.name}: {la.cell.name} ({la.input_size} -> {la.output_size}), {dirs}"

    def forward_fn(self) -> list[str]:
        h = self.model.head
        out = ["def forward(params, xs, state=None, lengths=None, resets=None):"]
        what = "probabilities" if h.kind == "softmax" else "values"
        shape = f"(B, T, {h.output_size})" if h.at == "per_step" else f"(B, {h.output_size})"
        out += docstring(
            f"Run the model: ({what} {shape}, final state); no dropout.\n\n"
            "xs: (B, T) token ids or (B, T, F) features; lengths: (B,) ints or None; resets:\n"
            "(B, T) bools or None (true: the row's state is zeroed before step t).", I1)
        out.append(f"{I1}_check_params(params)")
        out.append(f'{I1}dtype = params["head.W"].dtype')
        out.append(f"{I1}xs = np.asarray(xs)")
        out.append(f"{I1}_check_inputs(xs, None, state, lengths, resets, ids=True)")
        out.append(f"{I1}B, T = xs.shape[0], xs.shape[1]")
        out.append(f"{I1}state = _state_in(state, B, dtype)")
        out.append(f"{I1}m = _masks(B, T, lengths, resets, dtype)")
        out.append(f"{I1}z, final = _layers_forward(params, _encode(params, xs, dtype), state, m)")
        out.append(f'{I1}W, b = params["head.W"], params["head.b"]')
        if h.at == "per_step":
            out.append(f"{I1}out = _head_output(_matmul(z, W.T) + b)")
            out.append(f"{I1}return np.ascontiguousarray(np.swapaxes(out, 0, 1)), final")
        else:
            out.append(f"{I1}t_last, rows, present = _last_index(T, B, lengths)")
            out.append(f"{I1}z_last = np.where(present[:, None], z[t_last, rows], 0)")
            out.append(f"{I1}return _head_output(z_last @ W.T + b), final")
        return out

    def step_fn(self) -> list[str]:
        refusal = step_refusal(self.model)
        if refusal is not None:
            return refusal
        out = ["def step(params, x_t, state=None):"]
        out += docstring("One time step for streaming inference: (y_t, next state); no "
                         "dropout.\n\nx_t: (B,) token ids or (B, F) features. y_t: "
                         "probabilities (softmax head) or values.", I1)
        out.append(f"{I1}_check_params(params)")
        out.append(f"{I1}_check_inputs(x_t, state=state, ids=True, step=True)")
        out.append(f'{I1}dtype = params["head.W"].dtype')
        out.append(f"{I1}x = _encode(params, np.asarray(x_t)[:, None], dtype)")
        out.append(f"{I1}state = _state_in(state, x.shape[1], dtype)")
        out.append(f"{I1}m = _masks(x.shape[1], 1, None, None, dtype)")
        out.append(f"{I1}z, final = _layers_forward(params, x, state, m)")
        out.append(f'{I1}W, b = params["head.W"], params["head.b"]')
        out.append(f"{I1}return _head_output(z[0] @ W.T + b), final")
        return out

    def loss_and_grad_fn(self) -> list[str]:
        m, h, t = self.model, self.model.head, self.train
        out = ["def loss_and_grad(",
               f"{I1}params, xs, ys, state=None, lengths=None, resets=None, rng=None, "
               "wrt_inputs=False",
               "):"]
        window = ""
        if t is not None and t.k1 is not None:
            window = (f"\n\nTruncated BPTT (k1 = {t.k1}, k2 = {t.k2}): window j scores the "
                      "steps j k1 ... (j + 1) k1 - 1\nand backpropagates their losses through "
                      "the steps from max(0, (j + 1) k1 - k2) on; the\nstate entering a window "
                      "is a constant. The gradient is the sum over the windows.")
        out += docstring(
            "(loss, grads, final state): the mean data loss over the valid steps and its "
            "gradients." + ("\nA class id -1 in ys is a target that is not scored: it adds "
                           "nothing, and the mean\nis over the scored ones (none: loss 0)."
                           if h.kind == "softmax" else "") + "\n\n"
            "With `rng` (a numpy Generator) dropout is on. grads has the keys of params; with\n"
            "wrt_inputs=True also \"xs\" (the gradient w.r.t. the encoded inputs, (B, T, F)) "
            "and\n\"state/<name>\" for each initial-state entry." + window, I1)
        out.append(f"{I1}_check_params(params)")
        out.append(f'{I1}dtype = params["head.W"].dtype')
        out.append(f"{I1}xs = np.asarray(xs)")
        out.append(f"{I1}_check_inputs(xs, ys, state, lengths, resets, ids=True)")
        out.append(f"{I1}_check_targets(ys)")
        out.append(f"{I1}if rng is not None and not isinstance(rng, np.random.Generator):")
        out.append(f"{I2}raise TypeError(")
        out.append(f'{I2}    "rng: expected a numpy Generator (np.random.default_rng(seed)), "')
        out.append(f'{I2}    f"got {{type(rng).__name__}}"')
        out.append(f"{I2})")
        out.append(f"{I1}B, T = xs.shape[0], xs.shape[1]")
        out.append(f"{I1}state = _state_in(state, B, dtype)")
        out.append(f"{I1}m = _masks(B, T, lengths, resets, dtype)")
        out.append(f"{I1}drop = None if rng is None else _dropout_masks(rng, B, T, dtype)")
        out.append(f"{I1}windows = _windows(T, K1, K2)")
        out.append(f"{I1}# forward over the whole sequence, keeping a tape per layer direction")
        out.append(f"{I1}tapes = {{}}")
        out.append(f"{I1}x0 = _encode(params, xs, dtype)")
        out.append(f"{I1}z, final = _layers_forward(params, x0, state, m, drop, tapes)")
        out.append(f"{I1}# the head and the loss, a mean over the valid, scored steps")
        out.append(f'{I1}W, b = params["head.W"], params["head.b"]')
        if h.at == "per_step":
            weight = 'm["weight"]'
            if h.kind == "softmax":  # a class id -1 is a step that is not scored
                out.append(f"{I1}targets = np.asarray(ys).T")
                out.append(f"{I1}scored = targets != -1")
                out.append(f"{I1}targets = np.where(scored, targets, 0)")
                out.append(f'{I1}weight = m["weight"] * scored  # the steps whose loss counts')
                weight = "weight"
            else:  # values in the params' dtype (no float64 promotion)
                out.append(f"{I1}targets = np.swapaxes(np.asarray(ys, dtype=dtype), 0, 1)")
            out.append(f"{I1}logits = _matmul(z, W.T) + b")
            out.append(f"{I1}n = max(float({weight}.sum()), 1.0)  # no scored step: loss 0")
            out.append(f"{I1}loss, dlogits = _head_loss(logits, targets, {weight}, n)")
            out.append(f'{I1}grads = {{"head.W": _outer(dlogits, z), '
                       '"head.b": dlogits.sum(axis=(0, 1))}')
            out.append(f"{I1}dz = _matmul(dlogits, W)  # the adjoint of the head's input")
        else:
            out.append(f"{I1}t_last, rows, present = _last_index(T, B, lengths)")
            out.append(f"{I1}# each row's last valid step (zeros for a row of length 0)")
            out.append(f"{I1}z_last = np.where(present[:, None], z[t_last, rows], 0)")
            out.append(f"{I1}logits = z_last @ W.T + b")
            if h.kind == "softmax":  # a row of length 0, or of class id -1, does not count
                out.append(f"{I1}targets = np.asarray(ys)")
                out.append(f"{I1}scored = targets != -1")
                out.append(f"{I1}targets = np.where(scored, targets, 0)")
                out.append(f"{I1}weight = (present & scored).astype(dtype)")
            else:
                out.append(f"{I1}targets = np.asarray(ys, dtype=dtype)")
                out.append(f"{I1}weight = present.astype(dtype)  # a row of length 0 does "
                           "not count")
            out += call(f"{I1}loss, dlogits = _head_loss",
                        ["logits", "targets", "weight", "max(float(weight.sum()), 1.0)"])
            out.append(f'{I1}grads = {{"head.W": dlogits.T @ z_last, '
                       '"head.b": dlogits.sum(axis=0)}')
            out.append(f"{I1}dz = np.zeros_like(z)  # the adjoint of the head's input")
            out.append(f"{I1}dz[t_last, rows] = dlogits @ W")
        out.append(f"{I1}# backward, one truncated-BPTT window at a time (one window: full BPTT)")
        out.append(f"{I1}acc = {{name: {{}} for name in tapes}}  # summed adjoints per direction")
        out.append(f"{I1}d_state = {{}}  # the adjoint of the initial state")
        emb = m.input.kind == "embedding"
        need = "True" if emb else "wrt_inputs"
        out.append(f"{I1}dx0 = np.zeros_like(x0) if {need} else None")
        out.append(f"{I1}for s, lo, e in windows:")
        out.append(f"{I2}dy = _window_adjoint(dz, s, lo, e)  # the losses at lo:e only")
        drops = {n for n, _, _ in self.drop_places()}
        if "output" in drops:
            out.append(f"{I2}if drop is not None:")
            out.append(f'{I3}dy = dy * drop["output"][s:e]')
        for i in reversed(range(len(m.layers))):
            la = m.layers[i]
            out.append(comment(self.layer_title(la), I2))
            if la.name in drops:
                out.append(f"{I2}if drop is not None:")
                out.append(f"{I3}dy = dy * drop[{py_str(la.name)}][s:e]")
            n = la.cell.output_size
            for d in [x for x in self.dirs if x.layer is la]:
                dy = "dy"
                if la.bidirectional and la.merge == "concat":
                    dy = f"dy[..., :{n}]" if d.direction == "fwd" else f"dy[..., {n}:]"
                dx = "dx" if d.direction != "bwd" or not la.bidirectional else "dx_b"
                need_dx = "True" if i > 0 else "dx0 is not None"
                key = py_str(d.key)
                out += call(f"{I2}{dx}, ds = {d.code.fns['backward']}", [
                    f"tapes[{key}]", dy, "s", "e", 'm["keep"]', 'm["valid"]', str(d.reverse),
                    f"acc[{key}]", need_dx])
                # the initial state enters at step 0 (step T - 1 going backward in time)
                out.append(f"{I2}if {'e == T' if d.reverse else 's == 0'}:")
                for j, v in enumerate(la.cell.states):
                    out.append(f"{I3}_accumulate(d_state, {py_str(d.prefix + v.name)}, ds[{j}])")
            if la.bidirectional:
                out.append(f"{I2}dx = dx + dx_b if dx is not None else None")
            if la.residual and i == 0:  # dx is None when no input gradient is needed
                out.append(f"{I2}dx = dx + dy if dx is not None else None  # residual")
            elif la.residual:
                out.append(f"{I2}dx = dx + dy  # residual")
            if i > 0:
                out.append(f"{I2}dy = dx")
        out.append(f"{I2}if dx0 is not None:")
        if "input" in drops:
            out.append(f'{I3}dx0[s:e] += dx if drop is None else dx * drop["input"][s:e]')
        else:
            out.append(f"{I3}dx0[s:e] += dx")
        out.append(f"{I1}# parameter gradients from the adjoints summed over steps and windows")
        for d in self.dirs:
            key = py_str(d.key)
            out += call(f"{I1}g = {d.code.fns['backward_invariant']}",
                        [f'tapes[{key}]["k"]', f"acc[{key}]"])
            out += call(f"{I1}grads.update", [f"_prefixed({py_str(d.prefix)}, g)"])
        if emb:
            out.append(f'{I1}dE = np.zeros_like(params["input.E"])')
            out.append(f"{I1}np.add.at(dE, np.asarray(xs).T, dx0)  # rows of E, summed per id")
            out.append(f'{I1}grads["input.E"] = dE')
        out.append(f"{I1}grads = {{name: grads[name] for name in PARAM_SHAPES}}")
        out.append(f"{I1}if wrt_inputs:")
        out.append(f'{I2}grads["xs"] = np.ascontiguousarray(np.swapaxes(dx0, 0, 1))')
        out.append(f"{I2}for name in STATE_SHAPES:")
        out.append(f'{I3}grads["state/" + name] = d_state[name]')
        out.append(f"{I1}return loss, grads, final")
        return out

    def train_fns(self) -> list[str]:
        t = self.train
        out = ["_runtime_init_opt_state = init_opt_state", "", ""]
        out.append("def init_opt_state(params):  # noqa: F811")
        out += docstring("Zero optimizer state for the spec's updater (UPDATER).", I1)
        out.append(f"{I1}_check_params(params)")
        out.append(f"{I1}return _runtime_init_opt_state(params, UPDATER)")
        out += ["", ""]
        out.append("def train_step(params, opt_state, xs, ys, state=None, lengths=None, "
                   "resets=None, rng=None):")
        out += docstring(
            "One training update: (params, opt_state, final state, metrics).\n\n"
            "Loss and gradients as loss_and_grad, then the L1/L2 gradients (not for biases), "
            "then\nclipping (by value, then by global norm), then the updater with its "
            "learning-rate\nschedule. metrics = {\"loss\", \"grad_norm\" (before clipping), "
            "\"lr\"}.", I1)
        out.append(f"{I1}_check_opt_state(opt_state)")
        out.append(f"{I1}loss, grads, final = loss_and_grad(params, xs, ys, state, lengths, "
                   "resets, rng)")
        out.append(f'{I1}lr = learning_rate(opt_state["step"], UPDATER, SCHEDULE)')
        if t is not None and (t.l1 or t.l2):
            out.append(f"{I1}grads = regularize(grads, params, L1, L2, exclude=_is_bias)")
        out.append(f"{I1}grads, grad_norm = clip_gradients(grads, CLIP)")
        out.append(f"{I1}params, opt_state = apply_updates(params, grads, opt_state, UPDATER, "
                   "SCHEDULE)")
        out.append(f'{I1}metrics = {{"loss": loss, "grad_norm": grad_norm, "lr": lr}}')
        out.append(f"{I1}return params, opt_state, final, metrics")
        return out


def emit(program: Program) -> str:
    """The generated module's source for ``program``."""
    return NumpyEmitter(program).emit()
