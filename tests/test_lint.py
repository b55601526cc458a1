"""The linter (``[tool.ruff]`` in pyproject.toml: pycodestyle, pyflakes, bugbear) on the repository.

ruff runs as ``python -m ruff`` from this interpreter's environment (in the test extras: a
missing linter fails, it does not skip), from the repository root, so it reads pyproject.toml
and checks everything there: the package, tests, examples (the notebook too) and docs' hooks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ruff(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_repository_passes_ruff():
    out = _ruff(".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_reports_a_long_line_and_an_unused_import(tmp_path):
    """Proof the check can fail: the repo's own settings flag a planted file."""
    probe = tmp_path / "probe.py"
    probe.write_text('import os\n\nTEXT = "' + "x" * 130 + '"\n')
    out = _ruff("--config", str(REPO / "pyproject.toml"), str(probe), cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "E501" in out.stdout and "F401" in out.stdout, out.stdout
