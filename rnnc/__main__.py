"""The ``rnnc`` console script and ``python -m rnnc``.

A Ctrl-C while the command line is still importing (typer, rich, NumPy: about half a
second) ends like a Ctrl-C inside a command: one line and exit code 130, no traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from rnnc.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
