"""Small helpers that print Python source the way ``ruff format`` would.

Generated modules must be ``ruff format``-stable without running ruff at emit
time, so everything that can be long (data literals, calls) goes through the
black-style splitting below: one line when it fits in :data:`WIDTH` columns,
otherwise the outermost bracket is opened and each item gets its own line with
a trailing comma.
"""

from __future__ import annotations

import builtins
import keyword
import math
from collections.abc import Iterable, Sequence
from typing import Any


WIDTH = 100
INDENT = "    "


def py_str(s: str) -> str:
    """A string literal in ruff's preferred quotes (double, unless that needs more escapes)."""
    r = repr(s)
    if r.startswith("'") and '"' not in s:
        r = '"' + r[1:-1].replace("\\'", "'") + '"'
    return r


def py_float(v: float) -> str:
    if math.isinf(v):
        return "float('inf')" if v > 0 else "-float('inf')"
    if math.isnan(v):
        return "float('nan')"
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
    raise TypeError(f"cannot print {type(obj).__name__} as a literal")


def literal(obj: Any, prefix: str = "", suffix: str = "", indent: str = "") -> list[str]:
    """Lines of ``<indent><prefix><obj><suffix>``, split black-style when too long."""
    one = indent + prefix + inline(obj) + suffix
    if len(one) <= WIDTH:
        return [one]
    if isinstance(obj, dict) and obj:
        items = [(inline(k) + ": ", v) for k, v in obj.items()]
        opener, closer = "{", "}"
    elif isinstance(obj, list | tuple) and obj:
        items = [("", v) for v in obj]
        opener, closer = ("[", "]") if isinstance(obj, list) else ("(", ")")
    elif isinstance(obj, str) and len(obj) > 40:
        # a long string: implicit concatenation of short pieces, in parentheses
        pieces = [obj[i:i + 60] for i in range(0, len(obj), 60)]
        return ([indent + prefix + "("] + [indent + INDENT + py_str(p) for p in pieces]
                + [indent + ")" + suffix])
    else:
        return [one]
    lines = [indent + prefix + opener]
    for key, v in items:
        lines += literal(v, key, ",", indent + INDENT)
    lines.append(indent + closer + suffix)
    return lines


def call(head: str, args: Sequence[str], indent: str = "", tail: str = "") -> list[str]:
    """``<indent><head>(<args>)<tail>`` split black-style when it does not fit.

    Leading spaces of ``head`` count as the indent.
    """
    if not indent:
        indent = head[: len(head) - len(head.lstrip(" "))]
        head = head.lstrip(" ")
    one = f"{indent}{head}({', '.join(args)}){tail}"
    if len(one) <= WIDTH:
        return [one]
    joined = indent + INDENT + ", ".join(args)
    if len(joined) <= WIDTH:
        return [f"{indent}{head}(", joined, f"{indent}){tail}"]
    return [f"{indent}{head}("] + [f"{indent}{INDENT}{a}," for a in args] + [f"{indent}){tail}"]


def with_comment(code: str, comment: str, indent: str = "") -> list[str]:
    """One statement with a trailing comment, trimmed (or moved above) to fit the width."""
    line = indent + code
    if not comment:
        return [line] if len(line) <= WIDTH else _split_assign(code, indent)
    comment = " ".join(comment.split())
    room = WIDTH - len(line) - 4
    if room >= 12:
        if len(comment) > room:
            comment = comment[: room - 3].rstrip() + "..."
        return [f"{line}  # {comment}"]
    room = WIDTH - len(indent) - 2
    if len(comment) > room:
        comment = comment[: room - 3].rstrip() + "..."
    head = [f"{indent}# {comment}"]
    return head + ([line] if len(line) <= WIDTH else _split_assign(code, indent))


def _split_assign(code: str, indent: str) -> list[str]:
    """``x = f(a, b)`` that is too long: split at the outermost call's parentheses."""
    eq = code.find(" = ")
    rhs = code[eq + 3:] if eq >= 0 else code
    lhs = code[: eq + 3] if eq >= 0 else ""
    open_at = rhs.find("(")
    if open_at > 0 and rhs.endswith(")") and _matching(rhs, open_at) == len(rhs) - 1:
        args = _split_args(rhs[open_at + 1: -1])
        return call(lhs + rhs[:open_at], args, indent)
    return [indent + lhs + "(", indent + INDENT + rhs, indent + ")"]


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


def docstring(text: str, indent: str = "") -> list[str]:
    """A triple-quoted docstring; lines are escaped and wrapped to fit the width."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    raw: list[str] = []
    for i, line in enumerate(text.strip("\n").split("\n")):
        room = WIDTH - len(indent) - (3 if i == 0 else 0)
        if len(line) <= room:
            raw.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip(" "))]
        raw += wrap(line, room, lead, lead + ("    " if lead else ""))
    if len(raw) == 1 and len(indent) + len(raw[0]) + 6 <= WIDTH and not raw[0].endswith('"'):
        return [f'{indent}"""{raw[0]}"""']
    lines = [f'{indent}"""{raw[0]}'] + [(indent + r).rstrip() if r else "" for r in raw[1:]]
    lines.append(f'{indent}"""')
    return lines


def comment(text: str, indent: str = "") -> str:
    """``# text`` on its own line, trimmed to the width."""
    room = WIDTH - len(indent) - 2
    text = " ".join(text.split())
    if len(text) > room:
        text = text[: room - 3].rstrip() + "..."
    return f"{indent}# {text}"


def wrap(text: str, width: int, first: str = "", rest: str = "") -> list[str]:
    """Greedy word wrap (words longer than the width stay whole)."""
    words = text.split()
    lines: list[str] = []
    cur = first
    for w in words:
        if cur.strip() and len(cur) + 1 + len(w) > width:
            lines.append(cur.rstrip())
            cur = rest + w
        else:
            cur = cur + (" " if cur.strip() else "") + w
    if cur.strip():
        lines.append(cur.rstrip())
    return lines


RESERVED = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {
    "np", "math", "k", "t", "s", "e", "tape", "grads", "need_dx", "p", "xs", "acc",
}


class Namer:
    """Python names for IR names: unique, never a builtin, keyword or a reserved local."""

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
