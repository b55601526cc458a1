"""The results tree cannot be turned against the user, and unwritable places are one line.

A run never follows a symbolic link and never opens a non-regular file inside its run folder,
adopts only a folder that carries a run's record (``manifest.json``), and turns every place it
cannot write (a read-only folder, a file where a folder belongs, a full disk) into one
``error:`` line and exit status 2, with nothing half-written and the run resumable.

Runs use the synthetic data set and the tiny model (the cheap config of tests/test_hardening.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from tests.test_hardening import CHEAP, _npz, _one_line_error, _tree


def _argv(results: Path, name: str = "h", *extra: str) -> list[str]:
    sets = [x for o in CHEAP for x in ("--set", o)]
    return ["run", "--results", str(results), "--name", name, "--no-progress", *sets, *extra]


@pytest.fixture(scope="module")
def finished_tree(tmp_path_factory):
    """The results folder of a finished cheap run (copy it before changing it)."""
    results = tmp_path_factory.mktemp("tree") / "res"
    assert main(_argv(results)) == 0
    return results


def _copy(finished_tree: Path, tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "res"
    shutil.copytree(finished_tree, results, symlinks=True)
    return results, results / "h"


def _entry(run_dir: Path, folder: str) -> Path:
    return sorted((run_dir / "cache" / folder).iterdir())[0]


@pytest.fixture
def read_only():
    """``make(path)``: the folder becomes read-only for this process (chmod for a user; for root,
    who ignores modes, the immutable attribute); undone after the test."""
    undo = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(0o555)
            undo.append(lambda: path.chmod(mode))
            return
        r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a folder read-only for root here: {r.stderr.strip()}")
        undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))

    yield make
    for u in reversed(undo):
        u()


# ----------------------------------------------------------------------------- links and special files


def test_a_symlinked_run_folder_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    results = tmp_path / "res"
    results.mkdir()
    (results / "h").symlink_to(outside, target_is_directory=True)
    line = _one_line_error(capsys, _argv(results))
    assert f"{results / 'h'} is a symbolic link" in line
    assert _tree(outside) == set()


def test_a_planted_lock_link_cannot_overwrite_a_file_outside(finished_tree, tmp_path, capsys):
    results, run_dir = _copy(finished_tree, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir / ".lock").unlink()
    (run_dir / ".lock").symlink_to(victim)
    line = _one_line_error(capsys, _argv(results))
    assert f"{run_dir / '.lock'} is a symbolic link" in line
    assert victim.read_text() == "precious"


def test_a_planted_folder_link_cannot_send_files_outside(finished_tree, tmp_path, capsys):
    results, run_dir = _copy(finished_tree, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run_dir / "cache" / "scores")
    (run_dir / "cache" / "scores").symlink_to(outside, target_is_directory=True)
    line = _one_line_error(capsys, _argv(results))
    assert "is a symbolic link" in line and "remove it" in line
    assert _tree(outside) == set()


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_links_in_the_cache_are_one_line(finished_tree, tmp_path, capsys, kind):
    results, run_dir = _copy(finished_tree, tmp_path)
    if kind == "dangling":  # a dangling link where a folder belongs
        place = run_dir / "cache" / "attributions"
        shutil.rmtree(place)
        place.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    else:  # a link to itself where a cache entry belongs
        place = _entry(run_dir, "scores")
        place.unlink()
        place.symlink_to(place)
    line = _one_line_error(capsys, _argv(results))
    assert f"{place} is a symbolic link" in line


def test_report_refuses_a_linked_figures_folder(finished_tree, tmp_path, capsys):
    results, run_dir = _copy(finished_tree, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run_dir / "figures").symlink_to(outside, target_is_directory=True)
    line = _one_line_error(capsys, ["report", str(run_dir)])
    assert f"{run_dir / 'figures'} is a symbolic link" in line
    assert _tree(outside) == set()


def test_a_fifo_in_the_cache_does_not_hang_the_run(finished_tree, tmp_path, capsys):
    results, run_dir = _copy(finished_tree, tmp_path)
    fifo = _entry(run_dir, "scores")
    fifo.unlink()
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise TimeoutError("the run hung on the FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        line = _one_line_error(capsys, _argv(results))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert f"{fifo} is a FIFO" in line and "not a regular file" in line


def test_a_folder_where_a_cache_entry_belongs_is_one_line(finished_tree, tmp_path, capsys):
    results, run_dir = _copy(finished_tree, tmp_path)
    entry = _entry(run_dir, "scores")
    entry.unlink()
    entry.mkdir()
    line = _one_line_error(capsys, _argv(results))
    assert f"{entry} is a folder where a file belongs" in line


def test_a_lock_that_is_a_folder_is_one_line(tmp_path, capsys):
    results = tmp_path / "res"
    (results / "h" / ".lock").mkdir(parents=True)
    line = _one_line_error(capsys, _argv(results))
    assert f"{results / 'h' / '.lock'} is a folder where a file belongs" in line


def test_a_file_where_the_cache_folder_belongs_is_one_line(finished_tree, tmp_path, capsys):
    results, run_dir = _copy(finished_tree, tmp_path)
    shutil.rmtree(run_dir / "cache")
    (run_dir / "cache").write_text("not a folder")
    line = _one_line_error(capsys, _argv(results))
    assert f"{run_dir / 'cache'} is a file where a folder belongs" in line


def test_a_folder_that_is_not_a_run_is_not_adopted(tmp_path, capsys):
    results = tmp_path / "res"
    mine = results / "h" / "leaderboard.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own leaderboard\n")
    line = _one_line_error(capsys, _argv(results))
    assert f"{results / 'h'} is not a run folder (it has no manifest.json)" in line
    assert mine.read_text() == "my own leaderboard\n" and _tree(results / "h") == {"leaderboard.csv"}
    line = _one_line_error(capsys, ["report", str(results / "h")])
    assert "is not a run folder" in line and _tree(results / "h") == {"leaderboard.csv"}


# ----------------------------------------------------------------------------- unwritable places


@pytest.mark.parametrize("which", ["results folder", "empty run folder"])
def test_a_read_only_results_folder_is_one_line(tmp_path, capsys, read_only, which):
    results = tmp_path / "res"
    target = results if which == "results folder" else results / "h"
    target.mkdir(parents=True)
    read_only(target)
    line = _one_line_error(capsys, _argv(results))
    place = results / "h" if which == "results folder" else results / "h" / ".lock"
    assert f"cannot write {place}" in line and "writable" in line


def test_a_read_only_run_folder_is_one_line(finished_tree, tmp_path, capsys, read_only):
    results, run_dir = _copy(finished_tree, tmp_path)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    read_only(run_dir)
    line = _one_line_error(capsys, _argv(results, "h", "--set", "data.per_cell=1"))  # would rewrite the record
    assert "another config" in line
    line = _one_line_error(capsys, ["report", str(run_dir)])
    assert f"cannot write {run_dir}" in line and "writable" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_results_path_that_is_a_file_is_one_line(tmp_path, capsys):
    results = tmp_path / "res"
    results.write_text("a file")
    line = _one_line_error(capsys, _argv(results))
    assert f"{results} is a file where a folder belongs" in line


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_an_unwritable_checkpoint_folder_is_refused_before_training(tmp_path, capsys, monkeypatch, read_only, where):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the checkpoint folder was checked")

    for loop in ("models.training.fit", "models.tuning.fit"):
        monkeypatch.setattr(loop, no_training)
    root = tmp_path / "root"
    if where == "under a file":
        root.write_text("a file")
    else:
        root.mkdir()
        read_only(root)
    results = tmp_path / "res"
    line = _one_line_error(capsys, _argv(results, "h", "--set", f'checkpoint_dir="{root / "ck"}"'))
    assert f"{root}" in line and "checkpoint" in line
    assert not (results / "h" / "manifest.json").exists()  # a corrected re-run is not refused


def test_train_out_naming_a_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before --out was checked")

    monkeypatch.setattr("models.training.fit", no_training)
    out = tmp_path / "folder.pt"
    out.mkdir()
    line = _one_line_error(
        capsys, ["train", "--model", "tiny", "--dataset", "synthetic", "--out", str(out), "--no-progress"]
    )
    assert f"--out {out} is a folder" in line


def test_a_full_disk_mid_run_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    real = os.fsync
    calls = []

    def full(fd):
        calls.append(fd)
        if len(calls) >= 6:  # the record, the checkpoint and its sidecar, some cache entries: then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    results = tmp_path / "res"
    line = _one_line_error(capsys, _argv(results))
    assert "No space left on device" in line and "free" in line and "re-run" in line
    monkeypatch.undo()
    files = [p for p in results.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]  # nothing half-written
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())
    assert main(_argv(results)) == 0  # resumes
    manifest = json.loads((results / "h" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["units"]["from_cache"] >= 1


# ----------------------------------------------------------------------------- failed runs leave no record


def test_a_run_that_fails_on_bad_data_does_not_refuse_the_corrected_rerun(tmp_path, capsys):
    bad = _npz(tmp_path / "bad.npz", {"train": 40, "val": 10, "test": 10}, {"test": 1})
    good = _npz(tmp_path / "good.npz", {"train": 40, "val": 10, "test": 12})
    results = tmp_path / "res"
    cheap = [o for o in CHEAP if not o.startswith("data.dataset") and not o.startswith("data.options")]
    argv = ["run", "--results", str(results), "--name", "h", "--no-progress", *[x for o in cheap for x in ("--set", o)]]
    line = _one_line_error(capsys, [*argv, "--data-file", str(bad)])
    assert "holds only class 1" in line
    assert main([*argv, "--data-file", str(good)]) == 0
