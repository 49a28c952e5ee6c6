"""Print a spec AST as text (``.rnn``) or YAML: ``rnnc fmt``.

Both printers are deterministic, and parse(print(ast)) == ast for either
syntax, so YAML -> rnn -> YAML is a fixed point.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import yaml

from rnnc.errors import SpecError
from rnnc.spec import ast as A


_PREC = {"or": 1, "and": 2, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "@": 6}


def float_str(v: float) -> str:
    """A float as people write it: Python's shortest form that reads back as the same
    number, without its exponent's sign and zero padding (``1e-5``, ``2.5e20``, not
    ``1e-05``, ``2.5e+20``); the text language and rnnc's YAML reader take both."""
    text = repr(float(v))
    if "e" not in text and abs(v) >= 1e15:  # 1000000000000000.0: Python's switch is 1e16
        short = str(Decimal(text).normalize()).lower()
        text = short if "e" in short else text
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _num(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return float_str(v)


def expr_str(e: A.Expr, parent: int = 0) -> str:
    """An expression as source text, with only the parentheses it needs."""
    if isinstance(e, A.Num):
        return _num(e.value)
    if isinstance(e, A.Str):
        return json.dumps(e.value)
    if isinstance(e, A.Ref):
        return e.name
    if isinstance(e, A.Primed):
        return e.name + "'"
    if isinstance(e, A.Call):
        return f"{e.fn}({', '.join(expr_str(a) for a in e.args)})"
    if isinstance(e, A.Concat):
        return "[" + ", ".join(expr_str(a) for a in e.items) + "]"
    if isinstance(e, A.Slice):
        return f"{expr_str(e.operand, 8)}[{expr_str(e.lo)}:{expr_str(e.hi)}]"
    if isinstance(e, A.Neg):
        inner = expr_str(e.operand, 7)
        s = "-" + (f"({inner})" if inner.startswith("-") else inner)  # -(-a), not --a
        return f"({s})" if parent > 7 else s
    if isinstance(e, A.Not):
        s = "not " + expr_str(e.operand, 3)
        return f"({s})" if parent > 3 else s
    if isinstance(e, A.If):
        s = f"if {expr_str(e.cond, 1)} then {expr_str(e.then)} else {expr_str(e.other)}"
        return f"({s})" if parent > 0 else s
    if isinstance(e, A.BinOp):
        p = _PREC[e.op]
        # left-associative: the right operand needs parentheses at equal precedence
        right_p = p + 1
        if p == 4:  # comparisons do not chain
            left_p = right_p
        else:
            left_p = p
        s = f"{expr_str(e.left, left_p)} {e.op} {expr_str(e.right, right_p)}"
        return f"({s})" if parent > p else s
    raise TypeError(f"not an expression: {e!r}")


_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = {"if", "then", "else", "and", "or", "not", "none", "init", "true", "false"}


def value_str(v: Any) -> str:
    """A configuration value in the text language's value syntax."""
    if isinstance(v, A.CScalar):
        x = v.value
        if isinstance(x, bool):
            return "true" if x else "false"
        if x is None:  # YAML's null (an empty value)
            return "none"
        if isinstance(x, int | float):
            return float_str(x) if isinstance(x, float) else str(x)
        if _BARE.match(x) and x not in _KEYWORDS - {"true", "false"} and x not in (
                "true", "false"):
            return x
        return json.dumps(x)
    if isinstance(v, A.CList):
        return "[" + ", ".join(value_str(i) for i in v.items) + "]"
    if isinstance(v, A.CMap):
        if len(v.items) == 1 and _BARE.match(v.items[0][0]) and v.items[0][0] not in _KEYWORDS:
            (k, inner), = v.items
            if isinstance(inner, A.CMap):
                args = ", ".join(f"{_key_str(ik)}: {value_str(iv)}" for ik, iv in inner.items)
                return f"{k}({args})"
            if isinstance(inner, A.CList) and len(inner.items) > 1:
                # `uniform(-0.1, 0.1)`: the parser reads several positional arguments as a list
                return f"{k}({', '.join(value_str(i) for i in inner.items)})"
            if isinstance(inner, A.CScalar | A.CList):
                return f"{k}({value_str(inner)})"
        # any other mapping (several keys, or keys that are not names): a map literal
        return "{" + ", ".join(f"{_key_str(k)}: {value_str(x)}" for k, x in v.items) + "}"
    raise TypeError(v)


def _key_str(k: str) -> str:
    """A mapping key: bare where the grammar's `key` rule takes it, else quoted."""
    return k if _BARE.match(k) and k not in _KEYWORDS - {"init"} else json.dumps(k)


def _is_name(k: str) -> bool:
    """Whether the grammar reads ``k`` as a NAME (an entry's key, a word, a cell's name)."""
    return bool(_BARE.match(k)) and k not in _KEYWORDS - {"true", "false"}


_STATEMENTS = {"cell", "model", "train", "option", "state", "param", "output"}
"""Words that start a line of the text language: no entry or equation starts with them."""


def _need_name(k: Any, span: Any, what: str, starts_line: bool = False) -> None:
    """SpecError unless ``k`` can stand where the text language takes a NAME (at the start
    of a line: ``starts_line``): a YAML spec can use any string there, the text language
    cannot (its printed form would not parse, or would parse to another spec)."""
    if not isinstance(k, str) or not _is_name(k) or starts_line and k in _STATEMENTS:
        raise SpecError(f"{what}, {json.dumps(k)}, cannot be written in the rnn syntax, which "
                        "takes a name there (letters, digits and _, not a keyword)", span,
                        "rename it, or keep the spec in YAML")


def _entry_words(v: Any) -> str:
    """The words after an entry key (see the grammar's `entry` rule)."""
    if isinstance(v, A.CMap) and (len(v.items) != 1 or not isinstance(v.items[0][1], A.CMap)):
        # a pair's key is read as a word, where true and false are booleans
        if all(isinstance(x, A.CScalar | A.CList) and _is_name(k) and k not in ("true", "false")
               for k, x in v.items) and v.items:
            return " ".join(f"{k} {value_str(x)}" for k, x in v.items)
    return value_str(v)


_CLOSE = -1  # the anchor of a block's closing brace (see _with_comments)


def _line(span: Any) -> int | None:
    return getattr(span, "line", None)


def _cell_text(c: A.CellDef) -> list[tuple[str, int | None]]:
    """The cell's lines, each with the source line it came from (None: not known)."""
    _need_name(c.name, c.span, "the cell name")
    for name in c.inputs:
        _need_name(name, c.span, f"an input of cell '{c.name}'")
    for (k, _), kspan in zip(c.options.items, c.options.key_spans or (c.span,) * len(
            c.options.items), strict=False):
        _need_name(k, kspan, f"an option of cell '{c.name}'")
    for sd in c.states:
        _need_name(sd.name, sd.span, f"a state of cell '{c.name}'")
    for p in c.params:
        _need_name(p.name, p.span, f"a parameter of cell '{c.name}'")
    if c.output is not None:
        _need_name(c.output, c.output_span, f"the output of cell '{c.name}'")
    for eq in c.equations:
        _need_name(eq.target, eq.span, f"an equation of cell '{c.name}'", starts_line=True)
    lines = [(f"cell {c.name}({', '.join(c.inputs)}) {{", _line(c.span))]
    spans = c.options.key_spans or (None,) * len(c.options.items)
    for (k, v), kspan in zip(c.options.items, spans, strict=False):
        lines.append((f"  option {k} = {value_str(v)}", _line(kspan)))
    if c.states:
        parts = [s.name + (f"[{expr_str(s.size)}]" if s.size is not None else "")
                 for s in c.states]
        lines.append(("  state " + ", ".join(parts), _line(c.states[0].span)))
    for p in c.params:
        s = f"  param {p.name}"
        if p.shape is not None:
            s += "[" + ", ".join(expr_str(d) for d in p.shape) + "]"
        if p.init is not None:
            s += f" init {expr_str(p.init)}"
        if p.none:
            s += " none"
        lines.append((s, _line(p.span)))
    if c.output is not None:
        lines.append((f"  output {c.output}", _line(c.output_span)))
    for eq in c.equations:
        lines.append((f"  {eq.target}{chr(39) if eq.primed else ''} = {expr_str(eq.expr)}",
                      _line(eq.span)))
    lines.append(("}", _CLOSE))
    return lines


def _with_comments(lines: list[tuple[str, int | None]], spec: A.Spec) -> list[str]:
    """Put the source's comments back between the printed lines.

    A comment on a line of its own goes before the first printed line that comes from a
    later source line (indented like it, if it was indented), or before a block's closing
    brace when it was indented and nothing of the block follows it. A comment after code
    goes at the end of the printed line that comes from that source line.
    """
    source = spec.source
    anchors = [a for _, a in lines]
    last_of = {a: i for i, a in enumerate(anchors) if a is not None and a != _CLOSE}
    own, trailing = [], {}
    for line, col, text in spec.comments:
        before = source.line(line)[:col - 1] if source is not None else ""
        if before.strip() and line in last_of:
            trailing.setdefault(line, []).append(text)
        else:  # on a line of its own, or after code that prints without it
            own.append((line, 2 if before.strip() else col, text))
    out: list[str] = []
    k = 0

    def put(indent: str) -> None:
        nonlocal k
        line, col, text = own[k]
        if source is not None and line > 1 and not source.line(line - 1).strip() and out \
                and out[-1] != "":
            out.append("")  # a blank line above the comment in the source is kept
        out.append((indent if col > 1 else "") + text)
        k += 1

    for i, (text, anchor) in enumerate(lines):
        indent = text[:len(text) - len(text.lstrip())]
        if anchor == _CLOSE:
            later = next((a for a in anchors[i + 1:] if a is not None and a != _CLOSE), None)
            while k < len(own) and own[k][1] > 1 and (later is None or own[k][0] < later):
                put("  ")
        elif anchor is not None:
            while k < len(own) and own[k][0] < anchor:
                put(indent)
        if anchor is not None and anchor != _CLOSE and last_of.get(anchor) == i \
                and anchor in trailing:
            text += "  " + "  ".join(trailing.pop(anchor))
        out.append(text)
    if k < len(own):  # the file's last comments
        while out and out[-1] == "":
            out.pop()
        while k < len(own):
            put("")
    return out


def to_text(spec: A.Spec) -> str:
    """The spec in the rnnc text language (with the comments of a .rnn source)."""
    out: list[tuple[str, int | None]] = []
    for c in spec.cells:
        if c.doc:
            out.extend(("# " + line, None) for line in c.doc.splitlines())
        out.extend(_cell_text(c))
        out.append(("", None))
    for kind, block in (("model", spec.model), ("train", spec.train)):
        if block is None:
            continue
        spans = block.key_spans or (None,) * len(block.items)
        if kind == "model":
            name = block.get("name")
            if name is None:
                raise SpecError("a model without a name cannot be written in the rnn syntax "
                                "(`model NAME { ... }`)", block.span, "add `name: ...`")
            _need_name(name.value if isinstance(name, A.CScalar) else None,
                       getattr(name, "span", None) or block.span, "the model name")
            out.append((f"model {name.value} {{", _line(name.span)))
        else:
            out.append((kind + " {", spec.train_line if kind == "train" else None))
        for (k, v), kspan in zip(block.items, spans, strict=False):
            if kind == "model" and k == "name":
                continue
            _need_name(k, kspan or block.span, f"the {kind} key", starts_line=True)
            if kind == "model" and (k == "layer" or k == "layers" and not isinstance(
                    v, A.CList)):  # the text language has `layer` lines, and only them
                raise SpecError(f"the model's '{k}' " + (
                    "is not a list of layers" if k == "layers" else "key (not 'layers')") +
                    ", which cannot be written in the rnn syntax", kspan or block.span,
                    "give the model `layers: [{CELL: {hidden: N}}, ...]`")
            if kind == "model" and k == "layers" and isinstance(v, A.CList):
                if not v.items:  # no `layer` line says `layers: []`: it would vanish
                    raise SpecError("the model has no layers, which cannot be written in the "
                                    "rnn syntax (it has a `layer` line for each)",
                                    kspan or block.span, "add at least one layer")
                for layer in v.items:
                    out.append((f"  layer {_entry_words(layer)}", _line(layer.span)))
                continue
            out.append((f"  {k} {_entry_words(v)}", _line(kspan)))
        out.append(("}", _CLOSE))
        out.append(("", None))
    lines = _with_comments(out, spec) if spec.comments else [t for t, _ in out]
    return "\n".join(lines).rstrip("\n") + "\n"


def to_data(spec: A.Spec) -> dict:
    """The spec as plain data, in the YAML layout (also the canonical form that is hashed)."""
    data: dict[str, Any] = {}
    if spec.cells:
        cells = {}
        _once_each(((c.name, c.span) for c in spec.cells), "cell '{}' is defined twice",
                   "rename or remove one of them")
        for c in spec.cells:
            # a name given twice would be one key of a mapping here: the second would
            # silently replace the first (`rnnc check` refuses such a spec, with these words)
            spans = c.options.key_spans or (c.span,) * len(c.options.items)
            for what, names in (
                    ("option", zip((k for k, _ in c.options.items), spans, strict=False)),
                    ("state", ((sd.name, sd.span) for sd in c.states)),
                    ("parameter", ((p.name, p.span) for p in c.params))):
                _once_each(names, f"{what} '{{}}' is declared twice in cell '{c.name}'",
                           "give each its own name")
            _once_each(((eq.target + ("'" if eq.primed else ""), eq.span) for eq in c.equations),
                       f"'{{}}' is defined twice in cell '{c.name}'", "remove one of them")
            d: dict[str, Any] = {}
            if c.doc:
                d["doc"] = c.doc
            d["inputs"] = list(c.inputs)
            if c.options.items:
                d["options"] = A.plain(c.options)
            if c.states:
                if any(s.size is not None for s in c.states):
                    d["state"] = {s.name: expr_str(s.size) if s.size is not None else "hidden"
                                  for s in c.states}
                else:
                    d["state"] = [s.name for s in c.states]
            if c.params:
                params: dict[str, Any] = {}
                for p in c.params:
                    if p.none:
                        params[p.name] = "none"
                    elif p.shape is None and p.init is not None:
                        params[p.name] = expr_str(p.init)
                    else:
                        pd: dict[str, Any] = {}
                        if p.shape is not None:
                            pd["shape"] = [expr_str(s) for s in p.shape]
                        if p.init is not None:
                            pd["init"] = expr_str(p.init)
                        params[p.name] = pd
                d["params"] = params
            if c.output is not None:
                d["output"] = c.output
            d["equations"] = {eq.target + ("'" if eq.primed else ""): expr_str(eq.expr)
                              for eq in c.equations}
            cells[c.name] = d
        data["cells"] = cells
    if spec.model is not None:
        data["model"] = A.plain(spec.model)
    if spec.train is not None:
        data["train"] = A.plain(spec.train)
    return data


def _once_each(names: Any, message: str, hint: str) -> None:
    """SpecError at the second of two equal names (``(name, span)`` pairs)."""
    seen = set()
    for name, span in names:
        if name in seen:
            raise SpecError(message.format(name), span or None, hint)
        seen.add(name)


class _Dumper(yaml.SafeDumper):
    """Never folds a string over several lines (an equation stays on one line)."""

    def write_plain(self, text, split=True):
        super().write_plain(text, split=False)

    def write_single_quoted(self, text, split=True):
        super().write_single_quoted(text, split=False)

    def write_double_quoted(self, text, split=True):
        super().write_double_quoted(text, split=False)


class _Block(dict):
    """A mapping always written in block style, one key a line (a cell's equations)."""


def _str_rep(dumper: yaml.SafeDumper, s: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


def _block_rep(dumper: yaml.SafeDumper, d: dict):
    return dumper.represent_mapping("tag:yaml.org,2002:map", d, flow_style=False)


def _float_rep(dumper: yaml.SafeDumper, v: float):
    # `1e-5` as written: PyYAML would write 1.0e-05. YAML 1.1 reads 1e-5 as a string,
    # which rnnc's reader takes as the number (a plain scalar that is a decimal number)
    text = float_str(v)
    tag = "tag:yaml.org,2002:float"
    if dumper.resolve(yaml.ScalarNode, text, (True, False)) != tag:
        tag = "tag:yaml.org,2002:str"
    return dumper.represent_scalar(tag, text)


_Dumper.add_representer(str, _str_rep)
_Dumper.add_representer(float, _float_rep)
_Dumper.add_representer(_Block, _block_rep)


def to_yaml(spec: A.Spec) -> str:
    """The spec as YAML."""
    data = to_data(spec)
    for cell in data.get("cells", {}).values():
        cell["equations"] = _Block(cell["equations"])
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     allow_unicode=True, width=100)
