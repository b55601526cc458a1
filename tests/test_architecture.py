"""The layers of the code base: imports point one way, no cycle, no first-party import hidden in a function.

Layers, lowest first (a module may import its own layer and the layers below it; two different
layers of the same rank may not import each other):

    0 bench.core                  errors, registry, io, device, machine, schema
    1 bench.stats                 statistical inference (of scores and of classifiers)
    2 datasets                    loaders
    3 models                      ResNets, safety, recipes, checkpoints, training, tuning
    4 explainers                  adapters
    5 bench.metrics               metric families
    6 bench.perf, bench.report    floor/profiling/allocator; tables, figures, the report
    7 bench.run                   config, plan, units, cache, executors, manifest, runner
    8 bench.cli                   the command line
    9 bench.__main__, bench       entry points

The checker reads the source with ``ast`` (nothing is imported), so it also sees imports inside
functions and under ``if TYPE_CHECKING``. It is tested on small fake trees so that it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "datasets", "models", "explainers")
LAYERS = {
    "bench.core": 0,
    "bench.stats": 1,
    "datasets": 2,
    "models": 3,
    "explainers": 4,
    "bench.metrics": 5,
    "bench.perf": 6,
    "bench.report": 6,
    "bench.run": 7,
    "bench.cli": 8,
    "bench.api": 8,
    "bench.__main__": 9,
    "bench": 9,
}


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _layer(module: str, layers: dict[str, int]) -> str:
    best = max((name for name in layers if module == name or module.startswith(name + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"module {module} belongs to no layer; add it to LAYERS")
    return best


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The first-party module an import name refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported first-party module, line, inside a function) for every import of ``module``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] or [base]
            for n in names:
                target = _resolve(n, modules)
                if target is not None and target != module:
                    found.append((target, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def check_layers(root: Path, packages: tuple[str, ...] = PACKAGES, layers: dict[str, int] = LAYERS) -> list[str]:
    """Every violation as one line: upward or sideways imports, first-party imports inside
    functions, and import cycles among modules."""
    modules = _modules(root, packages)
    problems, graph = [], {m: set() for m in modules}
    for module, path in modules.items():
        here = _layer(module, layers)
        for target, line, in_function in _imports(module, path, modules):
            there = _layer(target, layers)
            where = f"{path.relative_to(root)}:{line}"
            if in_function:
                problems.append(f"{where}: {module} imports {target} inside a function")
            if there != here and layers[there] >= layers[here]:
                problems.append(
                    f"{where}: {module} ({here}, layer {layers[here]}) imports {target} "
                    f"({there}, layer {layers[there]})"
                )
            graph[module].add(target)
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_the_code_base_keeps_its_layers():
    problems = check_layers(REPO)
    assert problems == [], "\n".join(problems)


def test_every_module_has_a_layer():
    for module in _modules(REPO, PACKAGES):
        _layer(module, LAYERS)


# ----------------------------------------------------------------------------- the checker can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


FAKE_LAYERS = {"low": 0, "mid": 1, "high": 2}


def test_checker_reports_an_upward_import(tmp_path):
    root = _tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from high.b import thing\n",
            "high/__init__.py": "",
            "high/b.py": "thing = 1\n",
        },
    )
    problems = check_layers(root, ("low", "high"), FAKE_LAYERS)
    assert any("low.a (low, layer 0) imports high.b (high, layer 2)" in p for p in problems), problems


def test_checker_reports_a_hidden_import_and_a_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "mid/__init__.py": "",
            "mid/a.py": "from mid import b\n",
            "mid/b.py": "import mid.a\n",
            "high/__init__.py": "",
            "high/c.py": "def f():\n    from mid.a import x\n    import numpy\n",
        },
    )
    problems = check_layers(root, ("mid", "high"), FAKE_LAYERS)
    assert any("high.c imports mid.a inside a function" in p for p in problems), problems
    assert not any("numpy" in p for p in problems)  # third-party lazy imports are fine
    assert "import cycle: mid.a -> mid.b -> mid.a" in problems


def test_checker_reports_a_sideways_import_and_resolves_relative_ones(tmp_path):
    layers = {"left": 1, "right": 1, "base": 0}
    root = _tree(
        tmp_path,
        {
            "left/__init__.py": "",
            "left/x.py": "from . import y\nfrom right import z\n",
            "left/y.py": "",
            "right/__init__.py": "",
            "right/z.py": "from ..base import q\n",
            "base/__init__.py": "",
            "base/q.py": "",
        },
    )
    problems = check_layers(root, ("left", "right", "base"), layers)
    assert any("left.x (left, layer 1) imports right.z" in p for p in problems), problems
    assert not any("left.y" in p for p in problems)


@pytest.mark.parametrize("module", ["bench.core.errors", "bench.run.config", "bench.cli"])
def test_known_layers(module):
    assert LAYERS[_layer(module, LAYERS)] == {"bench.core.errors": 0, "bench.run.config": 7, "bench.cli": 8}[module]
