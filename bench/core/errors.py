"""User-facing errors: one line that names the problem and the fix."""
from __future__ import annotations


class BenchError(Exception):
    """An error caused by bad input (file, name, config value, checkpoint).

    The CLI prints ``error: <message>`` on one line and exits with status 2, without a
    traceback. The message must name what is wrong and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
