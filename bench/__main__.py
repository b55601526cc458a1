"""``python -m bench`` (and the ``pneumobench`` command, :func:`entry`): the CLI, with signals
handled from the first instant to the last. Importing torch and the libraries takes seconds: the
handlers are installed before that import (hence the import below them), so a SIGINT or SIGTERM
then ends the process with one line, not a traceback from inside an import. While a command runs,
:func:`bench.cli.main` handles them. After it, they are ignored: Python's shutdown would otherwise
put back the default handlers, and a second Ctrl-C during it would kill the process by the signal
(exit -2) instead of ending it with the status the command returned."""

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_started = False


def _before_work(signum, frame):  # noqa: ARG001 (a signal handler's signature)
    if not _started:
        os.write(2, b"interrupted; nothing was started\n")
    os._exit(128 + signum)


for _s in SIGNALS:
    signal.signal(_s, _before_work)

from bench.cli import main  # noqa: E402  (after the handlers: the import takes seconds)

_started = True


def entry() -> int:
    """Run the CLI, then ignore signals while Python exits."""
    code = main()
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(entry())
