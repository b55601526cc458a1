"""The Ray executor: a local Ray instance (loopback, 2 CPUs) runs the synthetic end-to-end config
and matches the local executor's tables; a worker killed mid-run is retried and the run completes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.run import runner
from bench.run.config import load_config
from bench.report.leaderboard import read_scores
from tests.test_runner import _overrides

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.slow
TIMING = ["seconds_per_image", "peak_mem_mb"]
SAFE_EXPLAINERS = ["captum.integrated_gradients", "random", "edge"]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for the module; its session files in a private folder, removed after."""
    import tempfile

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    session = tempfile.mkdtemp(prefix="pnb-ray-test-", dir="/tmp")  # short: Ray's socket paths
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=session,
    )
    yield session
    ray.shutdown()
    shutil.rmtree(session, ignore_errors=True)


def _cfg(tmp_path, name):
    return load_config(None, _overrides(tmp_path, name) + [f"explain.names={SAFE_EXPLAINERS!r}".replace("'", '"')])


def test_ray_leaves_nothing_in_the_system_temp_folder(tmp_path, monkeypatch):
    """A local Ray instance started by the run keeps its session files in a private folder, removed
    when the run ends (Ray's default is <temp>/ray, left behind). First in this file: no Ray yet."""
    import tempfile

    assert not ray.is_initialized()
    system_tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        monkeypatch.setenv("TMPDIR", str(system_tmp))
        monkeypatch.delenv("RAY_TMPDIR", raising=False)
        monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
        run_dir = runner.run(_cfg(tmp_path, "tmp"), progress=False, executor="ray")
        assert (run_dir / "scores.csv").is_file() and not ray.is_initialized()
        # torch makes its (empty) cache folder torchinductor_<user> there when an optimizer first imports
        # torch._dynamo, with either executor: not Ray's
        assert sorted(p.name for p in system_tmp.iterdir() if not p.name.startswith("torchinductor_")) == []
    finally:
        ray.shutdown()
        shutil.rmtree(system_tmp, ignore_errors=True)


def test_ray_and_local_give_the_same_tables(tmp_path, local_ray):
    local = runner.run(_cfg(tmp_path / "a", "local"), progress=False)
    remote = runner.run(_cfg(tmp_path / "b", "local"), progress=False, executor="ray")
    a, b = read_scores(local / "scores.csv"), read_scores(remote / "scores.csv")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))
    for f in ("prepost.csv", "curves.csv"):
        assert (local / f).read_bytes() == (remote / f).read_bytes(), f
    la = pd.read_csv(local / "leaderboard.csv", keep_default_na=False, na_values=[""]).drop(columns=TIMING)
    lb = pd.read_csv(remote / "leaderboard.csv", keep_default_na=False, na_values=[""]).drop(columns=TIMING)
    pd.testing.assert_frame_equal(la, lb)
    import json

    assert json.loads((remote / "manifest.json").read_text())["executor"] == "ray"


def test_a_killed_worker_is_retried_and_the_run_completes(tmp_path, local_ray, monkeypatch):
    from bench.run import ray_executor

    marker = tmp_path / "killed-once"
    # workers inherit the environment of the cluster they were started in: set it before they start
    monkeypatch.setenv(ray_executor.FAULT_ENV, str(marker))
    ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=local_ray,
        runtime_env={"env_vars": {ray_executor.FAULT_ENV: str(marker)}},
    )
    run_dir = runner.run(_cfg(tmp_path, "killed"), progress=False, executor="ray")
    assert marker.exists(), "no worker was killed: the fault hook did not run"
    scores = read_scores(run_dir / "scores.csv")
    assert (scores.status != "error").all()
    reference = runner.run(_cfg(tmp_path / "ref", "killed"), progress=False)
    pd.testing.assert_frame_equal(
        scores.drop(columns=TIMING), read_scores(reference / "scores.csv").drop(columns=TIMING)
    )
