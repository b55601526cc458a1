"""The one Markdown table writer every report uses."""
from __future__ import annotations

from typing import Any, Sequence


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    """Lines of a GitHub Markdown table (no trailing blank line).

    ``align`` has one letter per column, ``l`` (left, the default) or ``r`` (right); cells are
    written with ``str``.
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} must have one 'l' or 'r' per column ({len(header)} columns)")
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
            *(line(r) for r in rows)]
