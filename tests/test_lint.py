"""The linter and the formatter (``[tool.ruff]`` in pyproject.toml) on the repository: ``ruff check``
(pycodestyle, pyflakes, bugbear) and ``ruff format --check`` (the formatter's style: every file as
``ruff format`` writes it).

ruff runs as ``python -m ruff`` from this interpreter's environment (in the test extras: a
missing linter fails, it does not skip), from the repository root, so it reads pyproject.toml
and checks everything there: the package, tests, examples (the notebook too) and docs' hooks;
the formatter also checks the Python code blocks of the Markdown pages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ruff(command: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", command, "--no-cache", "--output-format", "concise", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _unformatted(out: subprocess.CompletedProcess[str]) -> list[str]:
    """The files ``ruff format --check`` would reformat (its concise lines: ``path:line:col: unformatted: ...``)."""
    return sorted({line.split(":", 1)[0] for line in out.stdout.splitlines() if ": unformatted: " in line})


def test_the_repository_passes_ruff():
    out = _ruff("check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_reports_a_long_line_and_an_unused_import(tmp_path):
    """Proof the check can fail: the repo's own settings flag a planted file."""
    probe = tmp_path / "probe.py"
    probe.write_text('import os\n\nTEXT = "' + "x" * 130 + '"\n')
    out = _ruff("check", "--config", str(REPO / "pyproject.toml"), str(probe), cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "E501" in out.stdout and "F401" in out.stdout, out.stdout


def test_the_repository_is_formatted():
    """Every file is as ``ruff format`` writes it (run ``ruff format .`` to fix the files named)."""
    out = _ruff("format", "--check", ".")
    files = _unformatted(out)
    assert out.returncode == 0 and not files, (
        f"ruff format would reformat {len(files)} file(s): {', '.join(files)}\n{out.stderr}"
    )


def test_ruff_format_reports_an_unformatted_file(tmp_path):
    """Proof the format check can fail: a planted file in another style is named, a formatted one is not."""
    (tmp_path / "probe.py").write_text("x = {'a':1,\n     'b':2}\n")
    (tmp_path / "clean.py").write_text('x = {"a": 1, "b": 2}\n')
    out = _ruff("format", "--check", "--config", str(REPO / "pyproject.toml"), ".", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert _unformatted(out) == ["probe.py"], out.stdout
