"""The one Markdown table writer and the one CSV writer every report uses."""

from __future__ import annotations

import math
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
    return [line(header), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|", *(line(r) for r in rows)]


def fmt_number(x: Any, spec: str = ".4g", *, inf: str | None = None) -> str:
    """``x`` formatted with ``spec``; "n/a" when it is missing or not a finite number (``inf``, if
    given, stands for +infinity), and never "-0"."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return inf if inf is not None and v == math.inf else "n/a"
    s = format(v, spec)
    return "0" if s in ("-0", "+0") and "+" not in spec else s


def csv_text(df: Any, float_format: str = "%.6g") -> str:
    """A pandas DataFrame as CSV text: no index, ``float_format`` (6 significant digits for derived
    tables; measurements keep more), ``\n`` line ends on every platform (byte-identical rebuilds)."""
    return df.to_csv(index=False, float_format=float_format, lineterminator="\n")
