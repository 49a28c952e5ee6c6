"""Front ends: YAML and the rnnc text language, both parsing into one AST."""

from __future__ import annotations

import re
from pathlib import Path

from rnnc.errors import SpecError
from rnnc.spec.ast import Spec as Spec


SYNTAXES = {".rnn": "rnn", ".yaml": "yaml", ".yml": "yaml"}


def parse_spec(text: str, name: str = "<spec>", syntax: str | None = None) -> Spec:
    """Parse spec text; the syntax comes from ``syntax`` or the name's extension."""
    if syntax is None:
        syntax = SYNTAXES.get(Path(name).suffix.lower())
        if syntax is None:  # another extension: sniffed from the first line of code
            code = [ln.strip() for ln in text.splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#")]
            rnn = code and re.match(r"(cell|model|train)\b(?!\s*:)", code[0])
            syntax = "rnn" if rnn else "yaml"
    if syntax == "rnn":
        from rnnc.spec.text import parse_text

        return parse_text(text, name)
    if syntax == "yaml":
        from rnnc.spec.yaml_front import parse_yaml

        return parse_yaml(text, name)
    raise SpecError(f"unknown spec syntax '{syntax}'", None, "use yaml or rnn")


def load_spec(path: str | Path) -> Spec:
    """Read and parse a spec file (``.yaml``/``.yml`` or ``.rnn``)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file '{p}' does not exist", None,
                        "check the path (specs/ holds the examples)") from None
    except OSError as err:
        raise SpecError(f"cannot read spec file '{p}': {err.strerror}", None) from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark some editors write is dropped
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError(f"spec file '{p}' is not UTF-8 (line {line}, column {column}, "
                        f"byte {err.start})", None, "save it as UTF-8") from None
    return parse_spec(text, str(path))
