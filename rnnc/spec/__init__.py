"""Front ends: YAML and the rnnc text language, both parsing into one AST."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from rnnc.errors import SpecError
from rnnc.spec.ast import Spec as Spec


SYNTAXES = {".rnn": "rnn", ".yaml": "yaml", ".yml": "yaml"}


def parse_spec(text: str, name: str = "<spec>", syntax: str | None = None) -> Spec:
    """Parse spec text; the syntax comes from ``syntax`` or the name's extension."""
    text = text.removeprefix("\ufeff")  # a byte-order mark (load_spec drops it too)
    if syntax is None:
        syntax = SYNTAXES.get(Path(name).suffix.lower())
        if syntax is None:
            # the first line that is no comment (a .rnn file often starts with some)
            first = next((ln.strip() for ln in text.splitlines()
                          if ln.strip() and not ln.lstrip().startswith("#")), "")
            syntax = "rnn" if re.match(r"(cell|model|train)\b(?!\s*:)", first) else "yaml"
    if syntax == "rnn":
        from rnnc.spec.text import parse_text

        return parse_text(text, name)
    if syntax == "yaml":
        from rnnc.spec.yaml_front import parse_yaml

        return parse_yaml(text, name)
    raise SpecError(f"unknown spec syntax '{syntax}'", None, "use yaml or rnn")


def endless_device(path: Path) -> bool:
    """Whether ``path`` is a character or block device other than a terminal (/dev/zero,
    /dev/urandom, a disk): reading it to its end takes forever or all the memory. FIFOs
    (``<(cmd)``) and terminals end, and are read."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False
    if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return False  # reading it fails with its own error
    try:
        return not os.isatty(fd)
    finally:
        os.close(fd)


def load_spec(path: str | Path) -> Spec:
    """Read and parse a spec file (``.yaml``/``.yml`` or ``.rnn``)."""
    p = Path(path)
    if endless_device(p):  # /dev/zero: reading never ends
        raise SpecError(f"spec file '{p}' is a device, not a file", None,
                        "give the path of a .rnn or .yaml file")
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
