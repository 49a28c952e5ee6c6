"""The ``rnnc`` console script and ``python -m rnnc``.

A Ctrl-C while the command line is still importing (typer, rich, NumPy: about half a
second) ends like a Ctrl-C inside a command: one line and exit code 130, no traceback;
one after the command has ended ends the process quietly.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    try:
        from rnnc.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    try:
        cli_main()
    finally:
        # the command is over, its last line printed: a Ctrl-C from here on (a second one
        # after `rnnc train`'s "interrupted") ends the process as an interrupt does, not
        # with a KeyboardInterrupt traceback from the interpreter's shutdown
        signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
