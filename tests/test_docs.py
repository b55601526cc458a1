"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, anchor, page
left out of the navigation or API reference fails it), the README stays a front page whose links
resolve, and no user-facing text talks about issue numbers or development machines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# user-facing text: the README, the pages, the changelog (the published runs' tables are outputs)
USER_TEXT = [
    README,
    REPO / "CHANGELOG.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "docs" / "api").glob("*.md")),
]
INTERNAL = re.compile(r"\b[Ii]ssues?\s+#?[0-9]+\b|developers.?\s+machine|development\s+machine")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor of a Markdown heading, as MkDocs' toc extension and repository hosts make it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text)


def anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.slow
def test_site_builds_strict_with_the_api_reference(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = p.stdout + p.stderr
    warnings = [ln for ln in output.splitlines() if ln.startswith(("WARNING", "ERROR"))]
    assert p.returncode == 0 and not warnings, output[-5000:]
    # the reference is generated from the docstrings, not an empty page
    evaluate = (site / "api" / "evaluate" / "index.html").read_text()
    assert "bench.api.evaluate" in evaluate and "Benchmark explainers on" in evaluate
    metrics = (site / "api" / "metrics" / "index.html").read_text()
    assert "bench.metrics.rise.deletion_auc" in metrics and "Petsiuk" in metrics
    assert "explainers.base.register_explainer" in (site / "api" / "explainers" / "index.html").read_text()
    # the pages link the committed published runs, which the site carries
    assert (site / "published" / "study" / "leaderboard_pooled.csv").is_file()


def test_readme_is_a_front_page_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make setup && .venv/bin/python -m pytest -q" in text  # the command CI runs (.ci/run)
    assert "(docs/adding-an-explainer.md)" in text  # one click away
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path if path else README
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"README links that do not resolve: {broken}"


@pytest.mark.parametrize("path", USER_TEXT, ids=lambda p: str(p.relative_to(REPO)))
def test_user_facing_text_has_no_issue_numbers_or_development_machines(path):
    text = path.read_text()
    found = [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group()!r}" for m in INTERNAL.finditer(text)]
    assert not found, f"{path.name} talks about the project's development: {found}"


def test_slug_matches_the_site():
    assert (
        slug("Clark et al.'s result does not hold here for this marker")
        == "clark-et-als-result-does-not-hold-here-for-this-marker"
    )
    assert slug("report.html") == "reporthtml"
