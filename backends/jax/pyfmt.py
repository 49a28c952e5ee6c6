"""Python source text that ``ruff format`` leaves as it is (line length 100).

The emitter builds generated modules from these helpers instead of running a
formatter, so its output does not depend on which tools are installed:

- :func:`literal` writes plain data (dicts, lists, tuples, strings, numbers) on one
  line when it fits, else one item per line with a trailing comma (which ruff keeps
  exploded), splitting long strings into implicitly concatenated pieces;
- :func:`call` writes ``target = func(args)`` the way ruff splits a long call;
- :func:`comment` and :func:`doc_text` make spec text safe inside comments and
  docstrings (no line breaks, no closing quotes).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import Any


WIDTH = 100


def pystr(s: str) -> str:
    """A string literal, double-quoted like ruff format prefers."""
    r = repr(s)
    if r.startswith("'") and '"' not in s:
        r = '"' + r[1:-1] + '"'
    return r


def clean(text: str) -> str:
    """One line of printable text: line breaks and other control characters become spaces."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        out.append(" " if cat.startswith("C") or cat in ("Zl", "Zp") else ch)
    return "".join(out)


def comment(text: str, room: int) -> str:
    """`# text` cut to at most `room` characters (empty when there is no room)."""
    text = clean(text).strip()
    if room < 8 or not text:
        return ""
    line = "# " + text
    if len(line) > room:
        line = line[: room - 3].rstrip() + "..."
    return line


def doc_text(text: str) -> str:
    """Spec text made safe inside a triple-quoted docstring."""
    text = clean(text).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return text + " " if text.endswith('"') else text


def _float(v: float) -> str:
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(v)


def _inline(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        return pystr(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_inline(k)}: {_inline(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    if isinstance(v, tuple):
        if len(v) == 1:
            return "(" + _inline(v[0]) + ",)"
        return "(" + ", ".join(_inline(x) for x in v) + ")"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as a literal")


def _split_string(s: str, width: int) -> list[str]:
    """Pieces of s, each a literal of at most `width` characters, broken after spaces."""
    pieces: list[str] = []
    rest = s
    while rest:
        cut = len(rest)
        while len(pystr(rest[:cut])) > width and cut > 1:
            space = rest.rfind(" ", 0, cut - 1)
            cut = space + 1 if space > 0 else cut - 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return [pystr(p) for p in pieces]


def literal(v: Any, indent: int = 0, used: int = 0, tail: int = 0) -> str:
    """`v` as source text starting at column indent + used, followed by `tail` characters."""
    text = _inline(v)
    if indent + used + len(text) + tail <= WIDTH:
        return text
    pad = " " * (indent + 4)
    end = " " * indent
    if isinstance(v, str):
        pieces = _split_string(v, WIDTH - indent - 4)
        if len(pieces) == 1:
            return text
        return "(\n" + "".join(f"{pad}{p}\n" for p in pieces) + end + ")"
    if isinstance(v, dict):
        lines = []
        for k, x in v.items():
            key = _inline(k) + ": "
            lines.append(f"{pad}{key}{literal(x, indent + 4, len(key), 1)},\n")
        return "{\n" + "".join(lines) + end + "}"
    if isinstance(v, list | tuple):
        open_, close = ("[", "]") if isinstance(v, list) else ("(", ")")
        lines = [f"{pad}{literal(x, indent + 4, 0, 1)},\n" for x in v]
        return open_ + "\n" + "".join(lines) + end + close
    return text


def assign(name: str, v: Any, indent: int = 0) -> str:
    """`name = <literal>` (one statement, possibly several lines)."""
    return " " * indent + f"{name} = " + literal(v, indent, len(name) + 3)


class Raw(str):
    """Source text used as-is inside :func:`call` arguments."""


class Seq:
    """A list display ``[a, b, ...]`` inside :func:`call` arguments."""

    def __init__(self, items: Sequence[str]):
        self.items = list(items)

    def __str__(self) -> str:
        return "[" + ", ".join(self.items) + "]"


def _arg_lines(arg: Any, indent: int) -> list[str]:
    """One call argument exploded at `indent` (ending in a comma)."""
    pad = " " * indent
    flat = f"{pad}{arg},"
    if len(flat) <= WIDTH or not isinstance(arg, Seq):
        return [flat]
    inner = [f"{pad}    {item}," for item in arg.items]
    return [f"{pad}["] + inner + [f"{pad}],"]


def call(indent: int, head: str, args: Sequence[Any], tail: str = "") -> str:
    """`head(args)tail`, split the way ruff format splits a call that is too long.

    `head` is everything up to the call's name (e.g. ``"y = jnp.concatenate"``), `tail`
    what follows the closing parenthesis (e.g. ``".T"``).
    """
    pad = " " * indent
    joined = ", ".join(str(a) for a in args)
    one = f"{pad}{head}({joined}){tail}"
    if len(one) <= WIDTH:
        return one
    first = f"{pad}{head}("
    last = f"{pad}){tail}"
    middle = f"{pad}    {joined}"
    if len(middle) <= WIDTH:
        return "\n".join([first, middle, last])
    lines = [first]
    for a in args:
        lines.extend(_arg_lines(a, indent + 4))
    lines.append(last)
    return "\n".join(lines)
