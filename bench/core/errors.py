"""User-facing errors: one line that names the problem and the fix."""
from __future__ import annotations

import textwrap


class BenchError(Exception):
    """An error caused by bad input (file, name, config value, checkpoint).

    The CLI prints ``error: <message>`` on one line and exits with status 2, without a
    traceback. The message must name what is wrong and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` on one line (whitespace folded); with ``limit``, at most that many characters,
    cut at a word boundary with " …" (never mid-word)."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return textwrap.shorten(flat, width=limit, placeholder=" …")
