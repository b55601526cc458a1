"""A normal install works: the wheel built from the repository, installed into a fresh virtual
environment without the source tree, runs ``python -m bench run`` and ``bench.evaluate`` from
another folder, with the shipped profiles, the LICENSE and ``bench.__version__`` in place.

The fresh environment sees the test environment's dependencies through a ``.pth`` file that lists
its site-packages folders (a plain path line: the editable install's own ``.pth`` in that folder is
not executed, so the repository stays invisible; the test checks it), so torch is not reinstalled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.run.config import CONFIG_DIR, DEFAULT_CONFIG, load_config

REPO = Path(__file__).resolve().parents[1]
# what a build does not need: the git folder, environments, outputs and earlier builds
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "results", "build", "site", "*.egg-info", "__pycache__", ".pytest_cache", ".benchmarks"
)

TINY_RUN = [
    "--no-progress",
    "--set",
    'data.dataset="synthetic"',
    "--set",
    "data.options.n=64",
    "--set",
    "data.per_cell=1",
    "--set",
    "data.background_size=4",
    "--set",
    'models.names=["tiny"]',
    "--set",
    'models.stages=["pre"]',
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=32",
    "--set",
    'explain.names=["captum.saliency", "random"]',
    "--set",
    'metrics.names=["deletion_auc"]',
    "--set",
    "metrics.params.deletion_auc.steps=4",
    "--set",
    "reliability.enabled=false",
    "--set",
    'device="cpu"',
]

EVALUATE = """
import json, os, sys
import torch
import bench, models
from importlib import metadata
torch.manual_seed(0)
model = models.build_model("tiny", in_channels=1, image_size=28).eval()
images = torch.rand(4, 1, 28, 28)
result = bench.evaluate(model, images, labels=[0, 1, 0, 1], explainers=["captum.saliency", "random"],
                        metrics=["deletion_auc"], metric_params={"deletion_auc": {"steps": 4}},
                        overrides=["reliability.enabled=false"], device="cpu", verbose=False)
result.save(sys.argv[1])
print(json.dumps({"version": bench.__version__, "metadata": metadata.version("pneumobench"),
                  "bench": bench.__file__, "models": models.__file__,
                  "sys_path": [os.path.realpath(p) for p in sys.path],
                  "rows": len(result.scores), "status": sorted(set(result.scores.status))}))
"""


def _clean_env() -> dict[str, str]:
    """The environment without what would put the repository back on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


PROFILES = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_shipped_profile_loads_by_name_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(name)
    assert Path(cfg.source) == CONFIG_DIR / f"{name}.toml"
    # a checkout's configs/ is the same file (a link to the package's profiles)
    assert (REPO / "configs" / f"{name}.toml").resolve() == (CONFIG_DIR / f"{name}.toml").resolve()


def test_profiles_are_package_data_and_unknown_ones_are_one_line(tmp_path, monkeypatch):
    assert CONFIG_DIR.parent == Path(sys.modules["bench"].__file__).parent and DEFAULT_CONFIG.name == "quick.toml"
    assert {"quick", "tiny", "full"} <= set(PROFILES)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchError) as exc:
        load_config("quik")
    message = str(exc.value)
    assert "config file quik not found" in message and "\n" not in message
    assert all(name in message for name in PROFILES)
    (tmp_path / "quick").mkdir()  # a folder of that name is no config file: the profile is meant
    assert Path(load_config("quick").source) == DEFAULT_CONFIG


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the repository (a build writes build/ and *.egg-info into its source)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=NOT_SOURCES)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        cwd=tmp,
    )
    (whl,) = (tmp / "dist").glob("pneumobench-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the dependencies come from this interpreter's site-packages."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent
        ).stdout.strip()
    )
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_pneumobench_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        cwd=venv.parent,
    )
    return python


@pytest.mark.slow
def test_wheel_ships_the_license_the_profiles_and_the_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
        shipped = {n.removeprefix("bench/configs/"): z.read(n) for n in names if n.startswith("bench/configs/")}
        license_files = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(license_files) == 1 and b"MIT License" in z.read(license_files[0])
    profiles = {p.name: p.read_bytes() for p in CONFIG_DIR.glob("*.toml")}
    assert {"quick.toml", "full.toml"} <= set(profiles) and shipped == profiles
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert "pneumobench contributors" in meta["Author"]
    classifiers = meta.get_all("Classifier")
    assert "Intended Audience :: Science/Research" in classifiers
    assert "attribution" in meta["Keywords"].split(",")
    assert "docs" in meta.get_all("Provides-Extra")
    # the repository's own files stay out of the wheel
    assert not any(n.startswith(("tests/", "results/", "docs/", "configs/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_runs_bench_and_evaluate_from_another_folder(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()

    # bench.evaluate, and what the interpreter imports: the wheel, never the repository
    out = json.loads(_run([str(installed), "-c", EVALUATE, str(work / "notebook")], cwd=work).stdout.splitlines()[-1])
    site = installed.parents[1]
    for module in ("bench", "models"):
        assert Path(out[module]).resolve().is_relative_to(site.resolve()), out[module]
    assert str(REPO.resolve()) not in out["sys_path"], out["sys_path"]
    assert out["version"] == out["metadata"] and out["version"] != "0+unknown"
    assert out["rows"] == 4 * 2 and out["status"] == ["ok"]
    assert (work / "notebook" / "scores.csv").is_file() and (work / "notebook" / "leaderboard.md").is_file()

    # python -m bench run with the default profile (quick, from the package data) and by profile name
    for extra, name in (([], "quick"), (["--config", "quick", "--name", "byname"], "byname")):
        _run([str(installed), "-m", "bench", "run", *TINY_RUN, *extra, "--results", "res"], cwd=work)
        run_dir = work / "res" / name
        for f in ("scores.csv", "leaderboard.md", "manifest.json", "report.html"):
            assert (run_dir / f).is_file(), f
        manifest = json.loads((run_dir / "manifest.json").read_text())
        source = Path(manifest["config_source"])
        assert source.name == "quick.toml" and source.resolve().is_relative_to(site.resolve()), source
        scores = (run_dir / "scores.csv").read_text().splitlines()
        assert len(scores) > 1 and all(",deletion_auc," in row for row in scores[1:])
    # the console script of [project.scripts] is installed too
    assert "run" in _run([str(installed.parent / "pneumobench"), "--help"], cwd=work).stdout
