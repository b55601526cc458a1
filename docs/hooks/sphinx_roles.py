"""MkDocs hook: the docstrings cross-reference in Sphinx's style (``:func:`load_config```), which
mkdocstrings' Google parser leaves as text; show the name as code, without the role."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj):(?=<code>)")


def on_page_content(html: str, **_: object) -> str:
    return ROLE.sub("", html)
