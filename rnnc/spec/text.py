"""Front end for the rnnc text language (``.rnn``), built on the Lark grammar.

The Transformer only builds AST nodes; every check happens later, so Lark's
``VisitError`` never hides a user error. Syntax errors become
:class:`~rnnc.errors.SpecSyntaxError` with a location, the source line, a
caret and a hint naming what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from importlib import resources
from typing import Any

from lark import (
    Lark,
    Token,
    Transformer,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)
from lark.exceptions import UnexpectedEOF, VisitError

from rnnc.errors import Source, Span, SpecError, SpecSyntaxError
from rnnc.spec import ast as A


def grammar_text() -> str:
    return resources.files("rnnc.grammar").joinpath("rnnc.lark").read_text(encoding="utf-8")


class _ParenNewlines:
    """Post-lexer: newlines inside ``( )`` and ``[ ]`` are just whitespace."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            if tok.type == "_NL" and depth > 0:
                continue
            yield tok


_comments: list[Token] = []  # the comments the lexer passed over in the current parse


@functools.cache
def _parser(start: str) -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        start=start,
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=_ParenNewlines(),
        lexer_callbacks={"COMMENT": _comments.append},
    )


_TOKEN_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "SIGNED_NUMBER": "a number",
    "ESCAPED_STRING": "a string",
    "_NL": "end of line",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "PRIME": "\"'\"",
    "ADDOP": "'+' or '-'",
    "MULOP": "'*', '/' or '@'",
    "MINUS": "'-'",
    "PLUS": "'+'",
    "CMP": "a comparison",
    "SEMICOLON": "';'",
    "$END": "end of input",
}


def _describe(tok_type: str) -> str:
    if tok_type in _TOKEN_NAMES:
        return _TOKEN_NAMES[tok_type]
    if tok_type.isupper() and tok_type.isalpha():
        return f"'{tok_type.lower()}'"
    return tok_type


def _expected_hint(expected: set[str]) -> str | None:
    names = sorted({_describe(t) for t in expected if not t.startswith("__")})
    if not names:
        return None
    if len(names) > 8:
        names = names[:8] + ["..."]
    return "expected " + ", ".join(names)


def _lines(source: Source) -> list[str]:
    """The source's lines, as the parser counts them, without the empty one after a final
    newline."""
    lines = source.lines()
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


def _syntax_error(err: UnexpectedInput, source: Source) -> SpecSyntaxError:
    line = getattr(err, "line", None) or 1
    col = getattr(err, "column", None) or 1
    if isinstance(err, UnexpectedCharacters):
        ch = source.text[err.pos_in_stream] if err.pos_in_stream < len(source.text) else "?"
        return SpecSyntaxError(
            f"unexpected character {ch!r}",
            Span(source, line, col, col + 1),
            "a lone CR (old Mac line endings) does not end a line in a .rnn file: save it "
            "with LF or CRLF line endings" if ch == "\r" else
            "equations use names, numbers, + - * / @, ( ) and [ ]; comments start with #",
        )
    if isinstance(err, UnexpectedEOF):
        lines = _lines(source)
        return SpecSyntaxError(
            "unexpected end of input", Span(source, len(lines), len(lines[-1]) + 1),
            _expected_hint(set(err.expected)) or "a block or expression is not finished",
        )
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    if tok.type == "$END":
        lines = _lines(source)
        return SpecSyntaxError(
            "unexpected end of input", Span(source, len(lines), len(lines[-1]) + 1),
            _expected_hint(set(err.expected)),
        )
    shown = "end of line" if tok.type == "_NL" else repr(str(tok))
    end = col + max(1, len(str(tok))) if tok.type != "_NL" else col + 1
    hint = _expected_hint(set(err.expected))
    if tok.type in ("_NL", "RBRACE") and "RPAR" in err.expected:
        hint = "a '(' before this is not closed"
    return SpecSyntaxError(f"unexpected {shown}", Span(source, line, col, end), hint)


class _Builder(Transformer):
    """Parse tree -> AST. Builds nodes only (no checks)."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    # -- positions
    def _span(self, meta_or_tok: Any) -> Span | None:
        if isinstance(meta_or_tok, Token):
            return Span(self.source, meta_or_tok.line, meta_or_tok.column,
                        meta_or_tok.column + len(str(meta_or_tok)))
        if getattr(meta_or_tok, "empty", True):
            return None
        end = meta_or_tok.end_column if meta_or_tok.end_line == meta_or_tok.line else None
        return Span(self.source, meta_or_tok.line, meta_or_tok.column, end)

    def __default__(self, data, children, meta):  # pragma: no cover - grammar is closed
        raise SpecError(f"internal: no AST rule for {data}")

    # -- top level
    def start(self, items):
        cells, model, train = [], None, None
        for it in items:
            if isinstance(it, A.CellDef):
                cells.append(it)
            elif it[0] == "model":
                if model is not None:
                    raise SpecError("a spec has one model block", it[1].span)
                model = it[1]
            else:
                if train is not None:
                    raise SpecError("a spec has one train block", it[1].span)
                train = it[1]
        return A.Spec(tuple(cells), model, train, self.source)

    def expr_only(self, items):
        return items[0]

    def value_only(self, items):
        return items[0]

    # -- cells
    @staticmethod
    def _name(tok: Token) -> str:
        return str(tok)

    def cell(self, items):
        name_tok, *rest = items
        inputs = []
        body = []
        for it in rest:
            if isinstance(it, Token):
                inputs.append(str(it))
            elif it is not None:
                body.append(it)
        opts, opt_spans, states, params, output, eqs = [], [], [], [], None, []
        output_span = None
        for kind, val in body:
            if kind == "option":
                opts.append((val[0], val[1]))
                opt_spans.append(val[2])
            elif kind == "state":
                states.extend(val)
            elif kind == "param":
                params.append(val)
            elif kind == "output":
                if output is not None:
                    raise SpecError("a cell has one output declaration", val[1])
                output, output_span = val
            else:
                eqs.append(val)
        span = self._span(name_tok)
        return A.CellDef(
            str(name_tok), tuple(inputs),
            A.CMap(tuple(opts), span, tuple(opt_spans)),
            tuple(states), tuple(params), output, tuple(eqs), span, output_span=output_span,
        )

    def option_decl(self, items):
        tok, value = items
        return ("option", (str(tok), value, self._span(tok)))

    def state_decl(self, items):
        return ("state", list(items))

    def state_var(self, items):
        tok, size = items
        return A.StateDecl(str(tok), size, self._span(tok))

    def param_decl(self, items):
        tok, *rest = items
        none = bool(rest) and isinstance(rest[-1], Token) and rest[-1].type == "NONE"
        if rest and (rest[-1] is None or none):
            rest = rest[:-1]
        init = rest[-1] if rest else None
        dims = tuple(d for d in rest[:-1] if d is not None)
        return ("param", A.ParamDecl(str(tok), dims or None, init, none, self._span(tok)))

    def output_decl(self, items):
        return ("output", (str(items[0]), self._span(items[0])))

    def equation(self, items):
        (name, primed, span), expr = items
        text = ""
        if span is not None:
            text = self.source.line(span.line).strip()
        return ("eq", A.Equation(name, primed, expr, span, text))

    def target(self, items):
        tok, prime = items
        return (str(tok), prime is not None, self._span(tok))

    # -- model / train blocks
    def _block(self, kind: str, name_tok: Token | None, entries, meta):
        items: list[tuple[str, Any]] = []
        spans: list[Span | None] = []
        layers: list[Any] = []
        layer_span = None
        if name_tok is not None:
            items.append(("name", A.CScalar(str(name_tok), self._span(name_tok))))
            spans.append(self._span(name_tok))
        for key, value, kspan in entries:
            if kind == "model" and key == "layer":
                layers.append(value)
                if layer_span is None:
                    layer_span = kspan
                    items.append(("layers", None))
                    spans.append(kspan)
                continue
            if kind == "model" and key == "layers":  # it would be replaced by the `layer`s
                raise SpecError("a model block gives each layer on a line of its own: "
                                "`layer CELL(...)`, not `layers`", kspan,
                                "write `layer lstm(hidden: 64)` for each layer")
            if key in (k for k, _ in items):
                raise SpecError(f"'{key}' is given twice in the {kind} block", kspan,
                                "remove one of them")
            items.append((key, value))
            spans.append(kspan)
        items = [(k, A.CList(tuple(layers), layer_span) if k == "layers" else v)
                 for k, v in items]
        return (kind, A.CMap(tuple(items), self._span(meta), tuple(spans)))

    def model(self, items):
        name_tok, *entries = items
        return self._block("model", name_tok, entries, name_tok)

    @v_args(meta=True)
    def train(self, meta, items):
        # the block's span is its `train` keyword (what 'train needs data' points at)
        span = Span(self.source, meta.line, meta.column, meta.column + len("train")) \
            if not meta.empty else None
        kind, block = self._block("train", None, items, None)
        return kind, dataclasses.replace(block, span=span)

    def entry(self, items):
        key, *words = items
        span = self._span(key)
        return (str(key), _words_to_value(words, span), span)

    # -- values
    def call(self, items):
        name, *args = items
        args = [a for a in args if a is not None]
        span = self._span(name)
        kw = [a for a in args if isinstance(a, tuple)]
        pos = [a for a in args if not isinstance(a, tuple)]
        if kw and pos:
            raise SpecError(f"'{name}(...)' mixes positional and named arguments", span,
                            "write every argument as name: value")
        if pos:
            inner = pos[0] if len(pos) == 1 else A.CList(tuple(pos), span)
        else:
            _once((k, kspan) for k, _, kspan in kw)
            inner = A.CMap(tuple((k, v) for k, v, _ in kw), span, tuple(s for _, _, s in kw))
        return A.CMap(((str(name), inner),), span, (span,))

    def key(self, items):
        tok = items[0]
        text = _unquote(str(tok)) if tok.type == "ESCAPED_STRING" else str(tok)
        return text, self._span(tok)

    def kwarg(self, items):
        (key, span), value = items
        return (key, value, span)

    def map(self, items):
        kw = [a for a in items if a is not None]
        span = kw[0][2] if kw else None
        _once((k, kspan) for k, _, kspan in kw)
        return A.CMap(tuple((k, v) for k, v, _ in kw), span, tuple(s for _, _, s in kw))

    def list(self, items):
        vals = tuple(i for i in items if i is not None)
        return A.CList(vals, vals[0].span if vals else None)

    def number(self, items):
        tok = items[0]
        text = str(tok)
        is_int = text.lstrip("+-").isdigit()
        return A.CScalar(int(text) if is_int else self._finite(tok), self._span(tok))

    def string(self, items):
        tok = items[0]
        return A.CScalar(_unquote(str(tok)), self._span(tok))

    def none(self, items):
        return A.CScalar(None, self._span(items[0]))  # YAML's null

    def name(self, items):
        tok = items[0]
        text = str(tok)
        value: Any = {"true": True, "false": False, "auto": "auto"}.get(text, text)
        return A.CScalar(value, self._span(tok))

    # -- expressions
    def num(self, items):
        return A.Num(self._finite(items[0]), self._span(items[0]))

    def _finite(self, tok) -> float:
        value = float(tok)
        if not math.isfinite(value):
            raise SpecError(f"the number {tok} is too large", self._span(tok),
                            "a spec's numbers must be finite: at most about 1.8e308 in size")
        return value

    def ref(self, items):
        return A.Ref(str(items[0]), self._span(items[0]))

    def primed(self, items):
        return A.Primed(str(items[0]), self._span(items[0]))

    def str(self, items):
        return A.Str(_unquote(str(items[0])), self._span(items[0]))

    def fcall(self, items):
        name, *args = items
        return A.Call(str(name), tuple(a for a in args if a is not None), self._span(name))

    def concat(self, items):
        return A.Concat(tuple(items), _span_of(items[0]))

    def binop(self, items):
        left, op, right = items
        return A.BinOp(str(op), left, right, self._span(op))

    def compare(self, items):
        return self.binop(items)

    def or_(self, items):
        return A.BinOp("or", items[0], items[1], _span_of(items[0]))

    def and_(self, items):
        return A.BinOp("and", items[0], items[1], _span_of(items[0]))

    def not_(self, items):
        return A.Not(items[0], _span_of(items[0]))

    def neg(self, items):
        return A.Neg(items[0], _span_of(items[0]))

    def slice(self, items):
        operand, lo, hi = items
        return A.Slice(operand, lo, hi, _span_of(operand))

    def ifexpr(self, items):
        cond, a, b = items
        return A.If(cond, a, b, _span_of(cond))


def _span_of(node: Any) -> Span | None:
    return getattr(node, "span", None)


def _once(keys: Any) -> None:
    """SpecError at the second of two equal keys (``(key, span)`` pairs) of one mapping:
    `lstm(hidden: 3, hidden: 4)` or `clip norm 1 norm 2` would otherwise keep the last."""
    seen = set()
    for k, kspan in keys:
        if k in seen:
            raise SpecError(f"'{k}' is given twice in this mapping", kspan, "remove one of them")
        seen.add(k)


def _unquote(text: str) -> str:
    import json

    return json.loads(text)


def _words_to_value(words: list[Any], span: Span | None) -> Any:
    """The words after an entry's key, as one configuration value (see the grammar)."""
    if len(words) == 1:
        return words[0]
    # name/value pairs: `clip norm 5.0 value 1.0`
    if len(words) % 2 == 0 and all(
        isinstance(w, A.CScalar) and isinstance(w.value, str) for w in words[::2]
    ):
        _once((w.value, w.span) for w in words[::2])
        return A.CMap(
            tuple((w.value, v) for w, v in zip(words[::2], words[1::2], strict=True)),
            span, tuple(w.span for w in words[::2]),
        )
    # a head word followed by pairs: `layer lstm(hidden: 64) dropout 0.2`
    head, rest = words[0], words[1:]
    if len(rest) % 2 == 0 and all(
        isinstance(w, A.CScalar) and isinstance(w.value, str) for w in rest[::2]
    ):
        extra = [(w.value, v) for w, v in zip(rest[::2], rest[1::2], strict=True)]
        extra_spans = [w.span for w in rest[::2]]
        if isinstance(head, A.CMap) and len(head.items) == 1:
            (name, inner), = head.items
            if isinstance(inner, A.CMap):
                spans = inner.key_spans or (None,) * len(inner.items)
                _once([(k, s) for (k, _), s in zip(inner.items, spans, strict=True)]
                      + [(k, s) for (k, _), s in zip(extra, extra_spans, strict=True)])
                inner = A.CMap(inner.items + tuple(extra), inner.span,
                               inner.key_spans + tuple(extra_spans))
                return A.CMap(((name, inner),), head.span, head.key_spans)
        if isinstance(head, A.CScalar) and isinstance(head.value, str):
            _once(zip((k for k, _ in extra), extra_spans, strict=True))
            return A.CMap(((head.value, A.CMap(tuple(extra), head.span,
                                                  tuple(extra_spans))),), span, (head.span,))
    raise SpecError(
        "cannot read these words as one value", words[1].span if len(words) > 1 else span,
        "write `key value`, `key name(arg: value, ...)` or `key name1 value1 name2 value2`",
    )


def parse_text(text: str, name: str = "<spec>") -> A.Spec:
    """Parse a whole ``.rnn`` spec."""
    return _parse(text, name, "start")


def parse_expr(text: str, source: Source | None = None, name: str = "<expr>") -> A.Expr:
    """Parse one expression (an equation's right-hand side, an initialiser, a size)."""
    return _parse(text, name, "expr_only", source)


def parse_value(text: str, name: str = "<value>") -> Any:
    return _parse(text, name, "value_only")


def _parse(text: str, name: str, start: str, source: Source | None = None) -> Any:
    source = source or Source(name, text)
    _comments.clear()
    try:
        tree = _parser(start).parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    comments = tuple((c.line, c.column, str(c).rstrip()) for c in _comments)
    _comments.clear()
    try:
        result = _Builder(source).transform(tree)
        deep = A.too_deep(result)
        if deep is not None:
            raise nesting_error(*deep)
        if isinstance(result, A.Spec) and comments:
            train_line = next((t.meta.line for t in tree.children
                               if getattr(t, "data", None) == "train"), None)
            result = dataclasses.replace(result, comments=comments, train_line=train_line)
        return result
    except VisitError as err:
        if isinstance(err.orig_exc, SpecError):
            raise err.orig_exc from None
        if isinstance(err.orig_exc, RecursionError):
            raise _too_deep(tree, source) from None
        raise
    except RecursionError:
        raise _too_deep(tree, source) from None


def nesting_error(node: Any, span: Span | None) -> SpecSyntaxError:
    """The error for a node nested deeper than :data:`rnnc.spec.ast.MAX_DEPTH`."""
    if isinstance(node, A.Expr):
        return SpecSyntaxError("an expression is nested too deeply (or is too long) to "
                               f"compile: more than {A.MAX_DEPTH} levels", span,
                               "split it into several equations")
    return SpecSyntaxError(f"lists or mappings are nested too deeply: more than {A.MAX_DEPTH} "
                           "levels", span, "a spec nests a few levels; look for unclosed "
                           "brackets")


def _too_deep(tree: Any, source: Source) -> SpecSyntaxError:
    """The error for a tree too deep to transform recursively, at its deepest node."""
    deepest, depth, stack = tree, 0, [(tree, 0)]
    while stack:  # iterative: the tree is too deep for recursion
        node, d = stack.pop()
        if not hasattr(node, "children"):
            continue
        if d > depth and getattr(node.meta, "line", None) is not None:
            deepest, depth = node, d
        stack.extend((child, d + 1) for child in node.children)
    meta = getattr(deepest, "meta", None)
    span = Span(source, meta.line, meta.column) if getattr(meta, "line", None) else None
    return SpecSyntaxError("an expression is nested too deeply (or is too long) to compile",
                           span, "split it into several equations")
