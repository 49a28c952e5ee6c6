"""The block format of the IR fixture files (``tests/fixtures/passes/*.txt``,
``tests/fixtures/autodiff.txt``)::

    # title: what the case shows
    <input IR, in the text form of `rnnc ir`>
    # expect:
    <the expected text>
"""

from pathlib import Path


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """(title, input IR, expected text) of every block in `path`."""
    out = []
    for chunk in path.read_text().split("# title: ")[1:]:
        title, _, rest = chunk.partition("\n")
        given_ir, _, expected = rest.partition("# expect:\n")
        out.append((title.strip(), given_ir.strip(), expected.strip()))
    return out
