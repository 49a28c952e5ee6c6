"""One error hierarchy for everything a user can get wrong.

Every error rnnc raises for bad input is an :class:`RnncError`. It carries a
message, an optional source :class:`Span` (file, line, column) and a short
hint. :meth:`RnncError.render` prints it the way the CLI shows it::

    specs/bad.rnn:3:14: error: unknown activation 'sigmod'
      f = sigmod(W_f @ x + b_f)
          ^^^^^^
    hint: did you mean 'sigmoid'?

The CLI prints exactly that text and exits non-zero; it never shows a traceback
for an ``RnncError`` (``--debug`` re-raises).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """A named source text (a spec file, or a string given on the command line)."""

    name: str
    text: str = field(repr=False, compare=False)
    yaml: bool = field(default=False, repr=False, compare=False)
    """Lines end where YAML ends them (also at a lone CR, NEL, U+2028 and U+2029), not
    only at LF as in the text language's parser: so line N is the parser's line N."""

    def lines(self) -> list[str]:
        if self.yaml:
            return YAML_BREAK.split(self.text)
        return [ln.removesuffix("\r") for ln in self.text.split("\n")]

    def line(self, lineno: int) -> str:
        lines = self.lines()
        if 1 <= lineno <= len(lines):
            return lines[lineno - 1]
        return ""


YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


@dataclass(frozen=True)
class Span:
    """A 1-based line/column position in a source, with an optional end column."""

    source: Source | None
    line: int
    column: int
    end_column: int | None = None

    @property
    def filename(self) -> str:
        return self.source.name if self.source is not None else "<spec>"

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}"

    def shifted(self, dline: int, dcol: int) -> Span:
        """This span moved by (dline, dcol) -- used for text embedded in YAML strings."""
        col = self.column + dcol if self.line == 1 else self.column
        end = None
        if self.end_column is not None:
            end = self.end_column + dcol if self.line == 1 else self.end_column
        return Span(self.source, self.line + dline, col, end)


_SHOWN = 100
"""The most characters of a source line an error shows."""


_BREAKS = re.compile("[\r\x85\u2028\u2029]")
"""Line breaks the text language's parser does not end a line at (a lone CR, ...)."""


def _visible(src: str, column: int) -> tuple[str, int]:
    """A source line as an error shows it, and the column in it: of a line with lone CRs
    (or NEL, U+2028, U+2029) only the piece that holds the column; other control
    characters (but tabs) as '?', so the terminal shows the line as it is in the file."""
    start = 0
    for m in _BREAKS.finditer(src):
        if m.start() < column - 1:
            start = m.end()
        else:
            src = src[:m.start()]
            break
    src = src[start:]
    src = "".join("?" if unicodedata.category(c) == "Cc" and c != "\t" else c for c in src)
    return src, column - start


class RnncError(Exception):
    """Base class of every user-facing error. Subclasses only name the category."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def with_span(self, span: Span | None) -> RnncError:
        if self.span is None and span is not None:
            self.span = span
        return self

    def to_dict(self) -> dict:
        """Structured form (for ``rnnc check --json``)."""
        out: dict = {"kind": type(self).__name__, "message": self.message, "hint": self.hint}
        if self.span is not None:
            out.update(file=self.span.filename, line=self.span.line, column=self.span.column)
        return out

    def render(self) -> str:
        """The error as the CLI prints it: location, message, source line, caret, hint."""
        head = f"{self.kind}: {self.message}"
        lines = []
        if self.span is not None:
            lines.append(f"{self.span}: {head}")
            src = self.span.source.line(self.span.line) if self.span.source else ""
            src, column = _visible(src, self.span.column)
            if src.strip():
                width = 1
                if self.span.end_column is not None and self.span.end_column > self.span.column:
                    width = self.span.end_column - self.span.column
                width = max(1, min(width, len(src) - column + 1))
                if len(src) > _SHOWN:  # a very long line: the part around the column
                    start = max(0, min(column - 1 - 20, len(src) - _SHOWN))
                    src = ("..." if start else "") + src[start:start + _SHOWN] + (
                        "..." if start + _SHOWN < len(src) else "")
                    column = column - start + (3 if start else 0)
                    width = max(1, min(width, _SHOWN - (column - 1) + (3 if start else 0)))
                lines.append(f"  {src}")
                # tabs before the column stay tabs, so the caret lines up under them
                pad = "".join(c if c == "\t" else " " for c in src[:column - 1])
                lines.append("  " + pad.ljust(column - 1) + "^" * width)
        else:
            lines.append(head)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class SpecSyntaxError(RnncError):
    """The spec text or YAML could not be parsed."""


class SpecError(RnncError):
    """The spec parsed but says something invalid (unknown name, wrong type, ...)."""


class ShapeError(SpecError):
    """Shapes in a cell's equations do not agree."""


class DataError(RnncError):
    """A dataset file or its options are unusable. ``option`` names the dataset option at
    fault, where one is (so the error can point at it in the spec)."""

    option: str | None = None

    def at_option(self, key: str) -> DataError:
        self.option = key
        return self


class TrainError(RnncError):
    """Training cannot start or go on (bad run folder, non-finite loss, ...)."""


class BackendError(RnncError):
    """A backend cannot be found or cannot compile what it was given."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler stopping the job), raised like a Ctrl-C so that
    everything a Ctrl-C cleans up or saves is cleaned up or saved; exit code 143."""


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: raise :class:`Terminated`."""
    raise Terminated


def in_syntax(span: Span | None, rnn: str, yaml: str) -> str:
    """A hint in the syntax of the spec ``span`` is in: ``rnn`` for a ``.rnn`` file, ``yaml``
    for a YAML one, both when the syntax is not known (no span)."""
    if span is None or span.source is None:
        return f"{rnn} (YAML: {yaml})"
    return yaml if span.source.yaml else rnn


_LONGEST = 60
"""The most characters of a value or name an error message quotes."""


def clip(text: str, longest: int = _LONGEST) -> str:
    """``text`` cut to ``longest`` characters with '...' (a name or value in a message: a
    3000-character one made the message 3000 characters long)."""
    return text if len(text) <= longest else text[:longest - 3] + "..."


def shown(v: object) -> str:
    """A spec's value as the spec writes it, for a message: true/false, none for YAML's
    null (an empty value), numbers as written (1e-5, not 1e-05), strings quoted, lists and
    mappings in flow style; cut to a readable length. Python's True, None and {'a': 1}
    mean little to a user of `epochs: yes`."""
    if v is None:
        return "none (no value)"
    return clip(_flow(v))


def _flow(v: object) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(v, int):
        text = str(v) if v.bit_length() < 400 else f"{str(v)[:20]}... ({len(str(v))} digits)"
        return text
    if isinstance(v, str):
        return repr(clip(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_flow(x) for x in v[:20]) + (", ..." if len(v) > 20 else "") + "]"
    if isinstance(v, dict):
        items = list(v.items())
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in items[:20]) + (
            ", ..." if len(items) > 20 else "") + "}"
    return clip(repr(v))


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for an unknown name, or a list of the valid ones."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if choices and len(choices) <= 12:
        return "expected one of: " + ", ".join(choices)
    return None


def unknown(what: str, name: str, choices: Iterable[str], span: Span | None = None,
            cls: type[RnncError] = SpecError) -> RnncError:
    """The standard 'unknown X' error with a did-you-mean hint."""
    return cls(f"unknown {what} '{clip(name)}'", span, did_you_mean(name, choices))
