"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib
import textwrap
from typing import Iterable


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


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the known name nearest to ``name`` (difflib's ratio >= 0.6),
    else ``""``: to follow the unknown name in a message."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
