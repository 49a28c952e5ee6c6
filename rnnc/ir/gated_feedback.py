"""Gated-feedback stacks (Chung et al. 2015, "Gated Feedback Recurrent Neural Networks").

In a gated-feedback stack every layer ``j`` sees, at step ``t``, the hidden
states of *all* layers at ``t - 1``, each through a scalar global reset gate::

    h*_{t-1}   = [h^1_{t-1}, ..., h^L_{t-1}]
    g^{i->j}   = sigmoid(w_g^{i->j} . x^j_t + u_g^{i->j} . h*_{t-1})
    U h^j_{t-1}  becomes  sum_i g^{i->j} U^{i->j} h^i_{t-1}

``x^j_t`` is layer ``j``'s input at step ``t`` (layer ``j-1``'s new output).
rnnc applies the substitution to every recurrent matmul ``U @ h`` of a layer
whose operand is the layer's own output state ``h`` (the cell's other
recurrent terms, such as ``U @ (r * h)`` in a reset-before GRU, keep their
layer-local form). Because the layers now interact within one step, lowering
turns the whole stack into **one** combined cell whose state is the union of
the layers' states; the cell's parameters and states are named
``<layer>_<symbol>`` (so in the generated module ``gf.layer1_W_f``), the gate
weights ``<layer j>_wg_<layer i>`` (shape ``(1, |x^j|)``) and
``<layer j>_ug_<layer i>`` (shape ``(1, sum H)``), and the new feedback
matrices ``<layer j>_<U>_from_<layer i>``. A layer with no such matmul (its
state read only element-wise or through a concatenation) has nothing to gate
and gets no gate weights.
"""

from __future__ import annotations

from dataclasses import replace

from rnnc.errors import SpecError
from rnnc.ir.nodes import Cell, Instr, Layer, Param, Var
from rnnc.ir.ops import attrs
from rnnc.spec import ast as A


def _output_state(layer: Layer) -> str:
    for s, v in layer.cell.next_state:
        if v == layer.cell.output:
            return s
    raise SpecError(
        f"layer '{layer.name}' emits '{layer.cell.output}', which is not one of its states, "
        "so it has no hidden state to feed back", None,
        "gated feedback needs cells whose output is a state (as h in lstm, gru, elman)")


def gated_feedback_stack(layers: list[Layer], spec: A.Spec) -> list[Layer]:
    """Combine the layers of a gated-feedback stack into one layer with one cell."""
    span = spec.model.key_span("stack") if spec.model is not None else None
    if len(layers) < 2:
        raise SpecError("a gated-feedback stack needs at least two layers", span)
    for layer in layers:
        if layer.directions != ("fwd",) or layer.residual:
            raise SpecError(f"layer '{layer.name}' is bidirectional, backward or residual, "
                            "which a gated-feedback stack cannot be", span,
                            "use forward layers in a gated_feedback stack")
    hid = [_output_state(layer) for layer in layers]
    sizes = [dict((s.name, s.size) for s in layer.cell.states)[h]
             for layer, h in zip(layers, hid, strict=True)]
    total = sum(sizes)

    params: list[Param] = []
    states: list[Var] = []
    instrs: list[Instr] = []
    next_state: list[tuple[str, str]] = []
    equations: list[str] = []
    x_name = layers[0].cell.inputs[0].name
    hstar = "h_star"
    # h*_{t-1}: every layer's hidden state at the previous step
    hstar_ins = Instr(hstar, "concat", tuple(f"{ly.name}_{h}" for ly, h in zip(
        layers, hid, strict=True)), (total,), True, comment="h*: all hidden states at t-1")
    instrs.append(hstar_ins)
    prev_out = x_name
    for j, layer in enumerate(layers):
        cell = layer.cell
        pre = f"{layer.name}_"
        rename = {v.name: pre + v.name for v in cell.states}
        rename.update({p.name: pre + p.name for p in cell.params})
        rename.update({i.name: pre + i.name for i in cell.instrs})
        rename[cell.inputs[0].name] = prev_out
        x_j, in_size = prev_out, layer.input_size
        params.extend(replace(p, name=pre + p.name) for p in cell.params)
        states.extend(Var(pre + s.name, s.size) for s in cell.states)
        # the global reset gates g^{i->j}, one scalar per example: (B, 1); only for a
        # layer with a recurrent matmul U @ h_j to gate (otherwise they would be dead
        # parameters that gate fusion can keep alive, fused with the next layer's)
        gates = []
        feedback = any(ins.op == "matmul" and ins.args[1] == hid[j] for ins in cell.instrs)
        for i, src in enumerate(layers if feedback else ()):
            w = Param(f"{pre}wg_{src.name}", (1, in_size), ("xavier_uniform", ()), (in_size, 1))
            u = Param(f"{pre}ug_{src.name}", (1, total), ("xavier_uniform", ()), (total, 1))
            params.extend([w, u])
            a, b, s, g = (f"{pre}g{i + 1}_{k}" for k in ("wx", "uh", "pre", "gate"))
            instrs += [
                Instr(a, "matmul", (w.name, x_j), (1,), True),
                Instr(b, "matmul", (u.name, hstar), (1,), True),
                Instr(s, "add", (a, b), (1,), True),
                Instr(g, "act", (s,), (1,), True, attrs(fn="sigmoid"),
                      comment=f"g^{{{src.name}->{layer.name}}}"),
            ]
            gates.append(g)
        for ins in cell.instrs:
            args = tuple(rename[a] for a in ins.args)
            name = rename[ins.name]
            if ins.op == "matmul" and ins.args[1] == hid[j]:
                instrs.extend(_feedback(ins, name, args[0], j, layers, hid, sizes, gates,
                                        params, pre))
                continue
            instrs.append(replace(ins, name=name, args=args))
        next_state.extend((pre + s, rename[v]) for s, v in cell.next_state)
        equations.extend(f"[{layer.name}] {e}" for e in cell.equations)
        prev_out = rename[cell.output]
    equations.append("gated feedback: U @ h_j  ->  sum_i g_ij * (U_ij @ h_i)")
    combined = Cell(
        name="gated_feedback", inputs=(Var(x_name, layers[0].input_size),),
        states=tuple(states), params=tuple(params), invariant=(), hoisted=(),
        body=tuple(instrs), next_state=tuple(next_state), output=prev_out,
        equations=tuple(equations),
    )
    top = layers[-1]
    return [Layer("gf", combined, layers[0].input_size, ("fwd",), "concat", False,
                  top.dropout)]


def _feedback(ins: Instr, name: str, weight: str, j: int, layers: list[Layer],
              hid: list[str], sizes: list[int], gates: list[str], params: list[Param],
              pre: str) -> list[Instr]:
    """``U @ h_j`` -> ``sum_i g_ij * (U_ij @ h_i)`` (U_jj is the layer's own U)."""
    rows = ins.shape[0]
    out: list[Instr] = []
    terms = []
    for i, src in enumerate(layers):
        h_i = f"{src.name}_{hid[i]}"
        if i == j:
            w = weight
        else:
            w = f"{weight}_from_{src.name}"
            params.append(Param(w, (rows, sizes[i]), ("xavier_uniform", ()), (sizes[i], rows)))
        m, e, t = f"{name}_m{i + 1}", f"{name}_g{i + 1}", f"{name}_t{i + 1}"
        out += [
            Instr(m, "matmul", (w, h_i), (rows,), True),
            Instr(e, "expand", (gates[i],), (rows,), True, attrs(n=rows)),
            Instr(t, "mul", (e, m), (rows,), True),
        ]
        terms.append(t)
    acc = terms[0]
    for k, t in enumerate(terms[1:], start=2):
        nm = name if k == len(terms) else f"{name}_s{k}"
        out.append(Instr(nm, "add", (acc, t), (rows,), True))
        acc = nm
    return out
