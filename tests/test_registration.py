"""No silent way to lose a method: every module of a registry package is imported and registers.

The contract tests enumerate the registries, so a new module in ``explainers/``, ``bench/metrics/``,
``models/`` or ``datasets/`` that its package ``__init__`` does not import would be left out
without any test noticing. Here every module file of those packages (``pkgutil``) must be in
``sys.modules`` after a fresh interpreter imports the package, and must have defined at least one
entry of the package's registry, unless it is one of the few :data:`HELPERS` (the registry itself,
shared code, training). Each package is probed in its own subprocess, so what other tests imported
does not count.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"explainers": "EXPLAINERS", "bench.metrics": "METRICS", "models": "MODELS", "datasets": "DATASETS"}
HELPERS = {
    "explainers.base",
    "explainers.references",
    "explainers.rescale",
    "explainers.expected_gradients",
    "bench.metrics.base",
    "bench.metrics.perturbation",
    "models.registry",
    "models.safety",
    "models.user",
    "models.recipes",
    "models.checkpoints",
    "models.training",
    "models.tuning",
    "datasets.base",
}

# What one fresh interpreter sees after `import <package>`: the package's module files, the ones
# loaded, and how many registry entries each defined (the entries' own modules; entry-point
# plug-ins are not loaded: they live outside the package and are not the question here).
PROBE = """
import importlib, json, pkgutil, sys
package, registry = sys.argv[1], sys.argv[2]
pkg = importlib.import_module(package)
files = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.ispkg)
loaded = sorted(n[len(package) + 1:] for n in sys.modules
                if n.startswith(package + ".") and "." not in n[len(package) + 1:])
registered = {}
for entry in getattr(pkg, registry)._entries.values():
    module = getattr(entry.obj, "__module__", None) or ""
    if module.startswith(package + "."):
        registered[module[len(package) + 1:]] = registered.get(module[len(package) + 1:], 0) + 1
print(json.dumps({"files": files, "loaded": loaded, "registered": registered}))
"""


def registration_problems(
    package: str, registry: str, helpers: set[str] = HELPERS, *, path: tuple[Path, ...] = (REPO,)
) -> list[str]:
    """One line per module of ``package`` that is not imported by its ``__init__`` or defines no
    entry of ``registry``, and per stale or wrong ``helpers`` line (``path``: the import path of
    the probe, first wins)."""
    seen = _probe(package, registry, path)
    init = package.replace(".", "/") + "/__init__.py"
    problems = []
    for name in seen["files"]:
        module, count = f"{package}.{name}", seen["registered"].get(name, 0)
        if module in helpers:
            if count:
                problems.append(
                    f"{module} is listed in HELPERS but registers {count} {registry} entries: take it off the list"
                )
        elif name not in seen["loaded"]:
            problems.append(
                f"{module} is not imported by {init}: its entries are never registered; import it "
                f"there (or list it in HELPERS if it registers nothing)"
            )
        elif not count:
            problems.append(
                f"{module} registers nothing in {package}.{registry}: register its entries with the "
                f"package's decorator (or list it in HELPERS if it is shared code)"
            )
    problems += [
        f"HELPERS lists {h}, which is not a module of {package}"
        for h in sorted(helpers)
        if h.rpartition(".")[0] == package and h.rpartition(".")[2] not in seen["files"]
    ]
    return problems


@functools.lru_cache(maxsize=None)
def _probe(package: str, registry: str, path: tuple[Path, ...]) -> dict:
    """:data:`PROBE` in a fresh interpreter (one per package and path: a few seconds each)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, package, registry],
        capture_output=True,
        text=True,
        env=env,
        cwd=path[0],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_module_is_imported_and_registers(package):
    problems = registration_problems(package, PACKAGES[package])
    assert problems == [], "\n".join(problems)


# ----------------------------------------------------------------------------- the check can fail


def test_a_forgotten_or_empty_module_is_reported(tmp_path):
    """A copy of explainers/ with one adapter module nobody imports, one module imported but
    registering nothing, and a helper that does register: each is one line (the copy shadows the
    real package: it comes first on the probe's path)."""
    copy = tmp_path / "explainers"
    shutil.copytree(REPO / "explainers", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "forgotten.py").write_text(
        "from explainers.base import Attribution, register_explainer\n\n\n"
        "@register_explainer('test.forgotten', passes=(0, 0))\n"
        "def forgotten(model, inputs, targets, *, background):\n"
        "    return Attribution(inputs)\n"
    )
    (copy / "quiet.py").write_text("VALUE = 1\n")
    with (copy / "__init__.py").open("a") as f:
        f.write("from explainers import quiet  # noqa: F401\n")
    problems = registration_problems(
        "explainers", "EXPLAINERS", HELPERS | {"explainers.controls"}, path=(tmp_path, REPO)
    )
    assert len(problems) == 3, problems
    assert any(p.startswith("explainers.forgotten is not imported by explainers/__init__.py") for p in problems)
    assert any(p.startswith("explainers.quiet registers nothing in explainers.EXPLAINERS") for p in problems)
    assert any(p.startswith("explainers.controls is listed in HELPERS but registers 2") for p in problems)


def test_a_stale_helper_is_reported():
    problems = registration_problems("datasets", "DATASETS", HELPERS | {"datasets.gone"})
    assert problems == ["HELPERS lists datasets.gone, which is not a module of datasets"]
