"""The type checker (``[tool.mypy]`` in pyproject.toml) on the whole package, strictest on the run
config and every module that reads it.

A field read that does not exist (``cfg.data.per_cel``) or a string lookup (``cfg["seed"]``) is
an error here, not a KeyError in the middle of a run; elsewhere, e.g. a value that may be None
reaching ``int()``. Slow on a cold cache (mypy reads torch's stubs: about a minute), seconds after
that (``.mypy_cache``).
"""

from __future__ import annotations

from pathlib import Path

import mypy.api as mypy_api  # in the test extras: a missing checker fails, it does not skip
import pytest

REPO = Path(__file__).resolve().parents[1]
# bench/run/config.py, its users, and the rest of bench/run (the strict override covers bench.run.*)
CHECKED = ["bench/run", "bench/api.py", "bench/report/truth.py"]
# the whole package, with the default checks outside that override
PACKAGE = ["bench", "explainers", "models", "datasets"]

pytestmark = pytest.mark.slow


def _mypy(*targets: str) -> tuple[str, int]:
    out, err, status = mypy_api.run(
        [
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(REPO / ".mypy_cache"),
            "--no-error-summary",
            *targets,
        ]
    )
    return out + err, status


def test_the_config_and_its_users_type_check(monkeypatch):
    monkeypatch.chdir(REPO)
    out, status = _mypy(*CHECKED)
    assert status == 0 and not out.strip(), out


def test_the_whole_package_type_checks(monkeypatch):
    monkeypatch.chdir(REPO)
    out, status = _mypy(*PACKAGE)
    assert status == 0 and not out.strip(), out


def test_the_checker_catches_a_misspelt_field_and_a_string_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # bench is imported from this checkout
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from bench.run.config import RunConfig\n\n\n"
        "def per_cell(cfg: RunConfig) -> int:\n    return cfg.data.per_cel\n\n\n"
        'def seed(cfg: RunConfig) -> int:\n    return cfg["seed"]\n\n\n'
        "def names(cfg: RunConfig) -> list[str]:\n    return cfg.explain.names\n"
    )
    out, status = _mypy(str(probe))
    assert status == 1
    assert '"DataSection" has no attribute "per_cel"' in out
    assert '"RunConfig" is not indexable' in out
    assert 'Incompatible return value type (got "tuple[str, ...]", expected "list[str]")' in out
