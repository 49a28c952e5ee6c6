"""Python source text that ``ruff format`` leaves as it is (line length 100), for every backend.

Generated modules must be ``ruff format``-stable without running ruff at emit time,
so the emitters build them from these helpers instead of running a formatter:

- :func:`literal` writes plain data (dicts, lists, tuples, strings, numbers) on one
  line when it fits in :data:`WIDTH` columns, else opens the outermost bracket and
  gives each item its own line with a trailing comma (which ruff keeps exploded);
  a long string becomes implicitly concatenated pieces in parentheses;
- :func:`call` writes ``head(args)tail`` the way ruff splits a call that is too long
  (:class:`Seq` arguments explode once more when their own line is too long);
- :func:`with_comment` puts a trailing comment on a statement, trimmed or moved above;
- :func:`clean`, :func:`one_line`, :func:`comment`, :func:`doc_text` and
  :func:`docstring` make spec text safe inside comments and docstrings (no line
  breaks or control characters, no closing quotes);
- :class:`Namer` maps IR names to unique Python names.

Every function returns source lines (``list[str]``); join them with ``"\\n"`` where
one string is wanted.
"""

from __future__ import annotations

import builtins
import keyword
import math
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any


WIDTH = 100
INDENT = "    "


# ------------------------------------------------------------------ literals


def py_str(s: str) -> str:
    """A string literal in ruff's preferred quotes (double, unless that needs more escapes)."""
    r = repr(s)
    if r.startswith("'") and '"' not in s:
        r = '"' + r[1:-1].replace("\\'", "'") + '"'
    return r


def py_float(v: float) -> str:
    """A float literal; infinities and NaN as ``float("inf")`` / ``float("nan")``."""
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(float(v))


def inline(obj: Any) -> str:
    """``obj`` (plain data) as a one-line literal."""
    if obj is None or isinstance(obj, bool):
        return repr(obj)
    if isinstance(obj, int):
        return repr(obj)
    if isinstance(obj, float):
        return py_float(obj)
    if isinstance(obj, str):
        return py_str(obj)
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{inline(k)}: {inline(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(inline(v) for v in obj) + "]"
    if isinstance(obj, tuple):
        if len(obj) == 1:
            return f"({inline(obj[0])},)"
        return "(" + ", ".join(inline(v) for v in obj) + ")"
    raise TypeError(f"cannot print {type(obj).__name__} {obj!r} as a literal")


def split_string(s: str, width: int) -> list[str]:
    """Literals of consecutive pieces of ``s``, each at most ``width`` wide, broken after spaces."""
    pieces: list[str] = []
    rest = s
    while rest:
        cut = len(rest)
        while len(py_str(rest[:cut])) > width and cut > 1:
            space = rest.rfind(" ", 0, cut - 1)
            cut = space + 1 if space > 0 else cut - 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return [py_str(p) for p in pieces]


def literal(obj: Any, prefix: str = "", suffix: str = "", indent: str = "") -> list[str]:
    """Lines of ``<indent><prefix><obj><suffix>``, split black-style when too long."""
    one = indent + prefix + inline(obj) + suffix
    if len(one) <= WIDTH:
        return [one]
    inner = indent + INDENT
    if isinstance(obj, str):
        pieces = split_string(obj, WIDTH - len(inner))
        if len(pieces) == 1 and len(inner + pieces[0]) > WIDTH:
            return [one]  # nothing to split at
        # (a string that fits only without its key: parenthesised, as ruff format keeps it)
        return [indent + prefix + "("] + [inner + p for p in pieces] + [indent + ")" + suffix]
    if isinstance(obj, dict) and obj:
        items = [(inline(k) + ": ", v) for k, v in obj.items()]
        opener, closer = "{", "}"
    elif isinstance(obj, list | tuple) and obj:
        items = [("", v) for v in obj]
        opener, closer = ("[", "]") if isinstance(obj, list) else ("(", ")")
    else:
        return [one]
    lines = [indent + prefix + opener]
    for key, v in items:
        lines += literal(v, key, ",", inner)
    lines.append(indent + closer + suffix)
    return lines


# --------------------------------------------------------------------- calls


class Seq:
    """A list display ``[a, b, ...]`` (or, with ``tuple=True``, a tuple display
    ``(a, b, ...)``) as a :func:`call` argument (explodes when too long)."""

    def __init__(self, items: Sequence[str], tuple: bool = False):  # noqa: A002
        self.items = list(items)
        self.open, self.close = "()" if tuple else "[]"
        self.one = "," if tuple and len(self.items) == 1 else ""  # (a,)

    def __str__(self) -> str:
        return self.open + ", ".join(self.items) + self.one + self.close


def _arg_lines(arg: Any, indent: str) -> list[str]:
    """One call argument on its own line(s) at ``indent``, ending in a comma."""
    flat = f"{indent}{arg},"
    if len(flat) <= WIDTH or not isinstance(arg, Seq):
        return [flat]
    return ([f"{indent}{arg.open}"] + [f"{indent}{INDENT}{item}," for item in arg.items]
            + [f"{indent}{arg.close},"])


def call(head: str, args: Sequence[Any], indent: str = "", tail: str = "") -> list[str]:
    """``<indent><head>(<args>)<tail>`` split the way ruff splits a call that does not fit.

    ``head`` is everything up to the parenthesis (``"y = np.concatenate"``), ``tail``
    what follows the closing one (``":"``, ``".T"``). Without ``indent``, leading
    spaces of ``head`` are the indent.
    """
    if not indent:
        indent = head[: len(head) - len(head.lstrip(" "))]
        head = head.lstrip(" ")
    joined = ", ".join(str(a) for a in args)
    one = f"{indent}{head}({joined}){tail}"
    if len(one) <= WIDTH:
        return [one]
    middle = indent + INDENT + joined
    if len(middle) <= WIDTH:
        return [f"{indent}{head}(", middle, f"{indent}){tail}"]
    lines = [f"{indent}{head}("]
    for a in args:
        lines += _arg_lines(a, indent + INDENT)
    return lines + [f"{indent}){tail}"]


def with_comment(code: str, comment: str, indent: str = "") -> list[str]:
    """One statement with a trailing comment, trimmed (or moved above) to fit the width."""
    line = indent + code
    if not comment:
        return [line] if len(line) <= WIDTH else _split_assign(code, indent)
    comment = one_line(comment)
    room = WIDTH - len(line) - 4
    if room >= 12:
        return [f"{line}  # {shorten(comment, room)}"]
    head = [f"{indent}# {shorten(comment, WIDTH - len(indent) - 2)}"]
    return head + ([line] if len(line) <= WIDTH else _split_assign(code, indent))


def _split_assign(code: str, indent: str) -> list[str]:
    """``x = f(a, b)`` that is too long: split at the outermost call's parentheses."""
    eq = code.find(" = ")
    rhs = code[eq + 3:] if eq >= 0 else code
    lhs = code[: eq + 3] if eq >= 0 else ""
    open_at = rhs.find("(")
    if open_at > 0 and rhs.endswith(")") and _matching(rhs, open_at) == len(rhs) - 1:
        args = [_as_seq(a) for a in _split_args(rhs[open_at + 1: -1])]
        return call(lhs + rhs[:open_at], args, indent)
    return [indent + lhs + "(", indent + INDENT + rhs, indent + ")"]


def _as_seq(arg: str) -> str | Seq:
    """A list display argument as a :class:`Seq` (so that it explodes when too long)."""
    if arg.startswith("[") and arg.endswith("]") and _matching(arg, 0) == len(arg) - 1:
        return Seq(_split_args(arg[1:-1]))
    return arg


def _matching(s: str, at: int) -> int:
    depth = 0
    for i in range(at, len(s)):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_args(s: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(s[start:i].strip())
            start = i + 1
    out.append(s[start:].strip())
    return [a for a in out if a]


# ------------------------------------------------- comments and docstrings


def clean(text: Any) -> str:
    """One line of printable text: line breaks and other control characters become spaces."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        out.append(" " if cat.startswith("C") or cat in ("Zl", "Zp") else ch)
    return "".join(out)


def one_line(text: Any) -> str:
    """:func:`clean` text with each run of white space made one space, stripped."""
    return " ".join(clean(text).split())


def shorten(text: str, room: int) -> str:
    """``text`` cut to ``room`` characters, ending in ``...`` when cut."""
    return text if len(text) <= room else text[: room - 3].rstrip() + "..."


def comment(text: Any, indent: str = "", width: int = WIDTH) -> str:
    """``<indent># text`` on one line of at most ``width`` columns.

    Empty when the text is empty or fewer than 8 columns are left after ``indent``.
    """
    text = one_line(text)
    if width - len(indent) < 8 or not text:
        return ""
    return f"{indent}# {shorten(text, width - len(indent) - 2)}"


def doc_text(text: Any) -> str:
    """Spec text made safe on one line of a triple-quoted docstring."""
    text = clean(text).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return text + " " if text.endswith('"') else text


def docstring(text: str, indent: str = "") -> list[str]:
    """A triple-quoted docstring; lines are escaped and wrapped to fit the width."""
    text = "\n".join(clean(line) for line in text.split("\n"))
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    raw: list[str] = []
    for i, line in enumerate(text.strip("\n").split("\n")):
        room = WIDTH - len(indent) - (3 if i == 0 else 0)
        if len(line) <= room:
            raw.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip(" "))]
        raw += wrap(line, room, lead, lead + (INDENT if lead else ""))
    if len(raw) == 1 and len(indent) + len(raw[0]) + 6 <= WIDTH and not raw[0].endswith('"'):
        return [f'{indent}"""{raw[0]}"""']
    if len(raw) == 1:  # ruff format puts a lone line's closing quotes after it: wrap it
        raw = wrap(raw[0], WIDTH - len(indent) - 6, "", "")
    lines = [f'{indent}"""{raw[0]}'] + [(indent + r).rstrip() if r else "" for r in raw[1:]]
    lines.append(f'{indent}"""')
    return lines


def wrap(text: str, width: int, first: str = "", rest: str = "") -> list[str]:
    """Greedy word wrap (words longer than the width stay whole)."""
    lines: list[str] = []
    cur = first
    for w in text.split():
        if cur.strip() and len(cur) + 1 + len(w) > width:
            lines.append(cur.rstrip())
            cur = rest + w
        else:
            cur = cur + (" " if cur.strip() else "") + w
    if cur.strip():
        lines.append(cur.rstrip())
    return lines


# --------------------------------------------------------------------- names


RESERVED = frozenset(dir(builtins)) | frozenset(keyword.kwlist)


class Namer:
    """Python names for IR names: unique, never a builtin, a keyword or a reserved local."""

    def __init__(self, reserved: Iterable[str] = ()):
        self.reserved = set(RESERVED) | set(reserved)
        self.map: dict[str, str] = {}
        self.used: set[str] = set()

    def __call__(self, name: str) -> str:
        if name not in self.map:
            self.map[name] = self.fresh(name)
        return self.map[name]

    def fresh(self, base: str) -> str:
        """A new unique Python name starting like ``base`` (no IR name maps to it)."""
        if not base.isidentifier():
            base = "v_" + "".join(c if c.isalnum() else "_" for c in base)
        if base.startswith("_"):
            base = "v" + base
        cand = base
        while cand in self.reserved or cand in self.used or keyword.iskeyword(cand):
            cand += "_"
        self.used.add(cand)
        return cand
