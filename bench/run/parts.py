"""A run in parts: a study too long for one sitting as ordinary runs, combined into one run folder.

A config with ``[parts.<part>]`` tables is one study. Each part is its config with that table
merged over it (:func:`bench.run.config.part_values`: typically other training seeds, stages or
metrics, ``data.nested_per_cell`` for a subset of the images, ``models.select_seed`` so every part
explains the images and classes the first seed's pre model picked). A part is an ordinary run in
``<results_dir>/<name>/parts/<part>`` with its own cache, tables and manifest, checkpoints in the
study's checkpoint folder; ``bench run --config C --part P`` runs one, each sized for a sitting.
``bench run --config C`` runs every part that has not finished (a finished part, manifest complete
and the same config, is taken as it is, without its cache) and then :func:`combine` s them into
``<results_dir>/<name>``, whose tables ``bench report`` rebuilds like any run's.

Combining checks that every part is finished with the config the study gives it, that one model
stage has one checkpoint (sha256) in every part, and that every part of an architecture had its
images picked by the same model. Model labels become ``<arch>@seed<k>`` when the study has several
seeds (a one-seed part labels its model ``<arch>``). Per (model, stage, explainer, metric) the rows
come from the part that scored the most images (ties: the first part), so parts may also split the
explainers of one model stage; rows another part scored again on
the same images are compared and the largest difference is recorded (``overlap`` in the
manifest; the ROAD noise and any per-batch draw differ with the images beside it). The seed-vs-seed
map similarity of models explained in different parts comes from their ``maps.npz``
(``report.maps = true``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_write_json, read_regular
from bench.core.machine import machine_info
from bench.report import plots
from bench.report.html import REPORT, write_html_report
from bench.report.plots import AttributionExamples
from bench.report.rebuild import MEASURED, _read_csv, write_outputs
from bench.run import runner
from bench.run.config import RunConfig, model_label, part_config, selection_seed, training_seeds
from bench.run.manifest import git_commit, package_versions
from bench.run.rundir import MARKER, claim, identity
from bench.run.similarity import MAPS, read_maps, seed_similarity
from bench.report.leaderboard import read_scores

KIND = "parts"
DONE = "complete"
# what combining reads from a part's folder (an exported part holds these only, its tables gzipped)
PART_FILES = (MARKER, "scores.csv", *MEASURED, MAPS, "attributions.npz", "prepost_models.json")


def parts_of(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """(name, config) of every part of ``cfg``, in the config's order; [] without ``[parts]``."""
    return [(name, part_config(cfg, name)) for name in cfg.parts]


def part_dir(part: RunConfig) -> Path:
    return Path(part.results_dir) / part.name


def _complete_record(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` when it records a complete run (status complete, a config), else None."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(read_regular(path))
    except (ValueError, OSError):
        return None
    done = isinstance(record, dict) and record.get("status") == DONE and isinstance(record.get("config"), dict)
    return record if done else None


def finished_record(part: RunConfig) -> dict[str, Any] | None:
    """The manifest of the part's folder when it records a complete run of exactly this config, else None."""
    record = _complete_record(part_dir(part))
    done = (
        record is not None
        and identity(record["config"]) == identity(part.to_dict())
        and table_path(part_dir(part), "scores.csv").is_file()
    )
    return record if done else None


def table_path(folder: Path, name: str) -> Path:
    """``folder / name``, or its gzipped copy ``name.gz`` (an exported part) when only that exists."""
    path = folder / name
    return path if path.is_file() or not (folder / f"{name}.gz").is_file() else folder / f"{name}.gz"


def export_part(src: str | Path, dest: str | Path) -> list[Path]:
    """Copy what combining reads of the finished part folder ``src`` (:data:`PART_FILES`: the
    manifest, the score tables gzipped, maps.npz and attributions.npz) into ``dest``, e.g. to
    commit it so that a later sitting on another machine can combine it (its cache, figures and
    own report stay behind: combining remakes those). The gzip files carry no time stamp, so the
    same part exports to the same bytes. Returns the files written."""
    import gzip
    import shutil

    src, dest = Path(src), Path(dest)
    if _complete_record(src) is None or not (src / "scores.csv").is_file():
        raise BenchError(
            f"{src} holds no finished run (manifest status complete and scores.csv); finish the part "
            f"first: python -m bench run --config <study> --part {src.name}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PART_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name.endswith(".csv"):
            target = dest / f"{name}.gz"
            with (
                open(path, "rb") as f,
                open(target, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as out,
            ):
                shutil.copyfileobj(f, out)
        else:
            target = dest / name
            shutil.copyfile(path, target)
        written.append(target)
    return written


def finished(part: RunConfig) -> bool:
    """The part's folder holds a complete run of exactly this config."""
    return finished_record(part) is not None


def run_parts(
    cfg: RunConfig, *, only: str | None = None, progress: bool = True, say: Callable[[str], None] = print
) -> Path:
    """``only``: run that part and return its folder. Otherwise every part not yet finished, then
    :func:`combine`; returns the study's folder."""
    if not cfg.parts:
        raise BenchError(
            f"--part {only!r}: the config has no [parts] tables"
            if only
            else "run_parts needs a config with [parts] tables"
        )
    parts = parts_of(cfg)
    if only is not None:
        match = [p for n, p in parts if n == only]
        if not match:
            part_config(cfg, only)  # the one-line error, with "did you mean"
        return runner.run(match[0], progress=progress)
    parent = Path(cfg.results_dir) / cfg.name
    with claim(parent, cfg):
        for name, part in parts:
            if finished(part):
                say(f"[parts] {name}: finished, taken as it is ({part_dir(part)})")
                continue
            say(f"[parts] {name}: running in {part_dir(part)}")
            runner.run(part, progress=progress)
        return _combine(cfg, parts, parent, say)


def combine(cfg: RunConfig, *, say: Callable[[str], None] = print) -> Path:
    """Combine the finished parts of ``cfg`` into ``<results_dir>/<name>`` (module docstring)."""
    parent = Path(cfg.results_dir) / cfg.name
    with claim(parent, cfg):
        return _combine(cfg, parts_of(cfg), parent, say)


# ----------------------------------------------------------------------------- combining


def _records(cfg: RunConfig, parts: list[tuple[str, RunConfig]]) -> list[dict[str, Any]]:
    out = []
    for name, part in parts:
        record = finished_record(part)
        if record is None:
            raise BenchError(
                f"part {name} has not finished ({part_dir(part)} holds no complete run of its config); "
                f"run python -m bench run --config {cfg.source or '<config>'} --part {name}"
            )
        out.append(record)
    return out


def relabels(cfg: RunConfig, parts: list[tuple[str, RunConfig]]) -> list[dict[str, str]]:
    """Per part, {its model label: the study's label} (``<arch>@seed<k>`` when the study has
    several training seeds, else ``<arch>``)."""
    seeds = sorted({s for _, p in parts for s in training_seeds(p)})
    several = len(seeds) > 1
    out = []
    for _, p in parts:
        out.append(
            {
                model_label(p, arch, seed): (f"{arch}@seed{seed}" if several else arch)
                for arch in p.models.names
                for seed in training_seeds(p)
            }
        )
    return out


def _selector(record: dict[str, Any], part: RunConfig, arch: str) -> str | None:
    """The sha256 of the model that picked ``arch``'s images in a part (its manifest's
    ``selection``; for a part recorded before it, its first seed's pre checkpoint)."""
    sel = (record.get("selection") or {}).get(arch)
    if sel:
        return str(sel.get("sha256"))
    label = model_label(part, arch, selection_seed(part))
    return next(
        (
            c.get("sha256")
            for c in record.get("checkpoints") or []
            if c.get("model") == label and c.get("stage") == "pre"
        ),
        None,
    )


def _check_models(
    parts: list[tuple[str, RunConfig]], records: list[dict[str, Any]], names: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """One checkpoint per (model, stage) across parts, one image-picking model per architecture;
    returns the study's checkpoint records (relabelled)."""
    seen: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for (name, _), record, rename in zip(parts, records, names):
        for c in record.get("checkpoints") or []:
            key = (rename.get(c["model"], c["model"]), c["stage"])
            if key in seen and seen[key][1]["sha256"] != c["sha256"]:
                raise BenchError(
                    f"{key[0]} {key[1]} has checkpoint {seen[key][1]['sha256'][:12]} in part "
                    f"{seen[key][0]} and {c['sha256'][:12]} in part {name}: the parts explained different "
                    f"models (retrained elsewhere?); re-run part {name} with the study's checkpoint "
                    f"folder"
                )
            seen.setdefault(key, (name, {**c, "model": key[0], "part": name}))
    pickers: dict[str, tuple[str, str | None]] = {}
    for (name, part), record in zip(parts, records):
        for arch in part.models.names:
            sha = _selector(record, part, arch)
            if arch in pickers and pickers[arch][1] != sha:
                raise BenchError(
                    f"the images of {arch} were picked by model {str(pickers[arch][1])[:12]} in part "
                    f"{pickers[arch][0]} and by {str(sha)[:12]} in part {name}: the parts explain "
                    f"different images; give every part the same models.select_seed and checkpoints"
                )
            pickers.setdefault(arch, (name, sha))
    return [c for _, c in seen.values()]


def _renamed(table: pd.DataFrame, rename: dict[str, str]) -> pd.DataFrame:
    """``table`` with its model labels the study's (a table without a model column as it is)."""
    out = table.copy()
    if "model" in out.columns:
        out["model"] = out["model"].map(lambda m: rename.get(m, m))
    return out


def _relabel(table: pd.DataFrame | None, rename: dict[str, str]) -> pd.DataFrame | None:
    return None if table is None else _renamed(table, rename)


SCORE_KEY = ["model", "stage", "explainer", "metric", "image"]  # one row of scores.csv
OWNER_KEY = SCORE_KEY[:4]  # rows of one part per (model, stage, explainer, metric)
OWNED_BY = {"scores.csv": "metric", "substrates.csv": "metric", "curves.csv": "curve", "substrate_curves.csv": "curve"}


def _owned(
    tables: list[pd.DataFrame | None],
    owners: dict[tuple[str, str, str, str], int],
    column: str,
    curve_metric: dict[str, str],
) -> pd.DataFrame | None:
    """The rows of each (model, stage, explainer, metric) from the part that owns it."""
    kept = []
    for k, t in enumerate(tables):
        if t is None or not len(t):
            continue
        metric = t[column].map(lambda c: curve_metric.get(c, c)) if column == "curve" else t[column]
        mine = [owners.get((m, s, e, x)) == k for m, s, e, x in zip(t["model"], t["stage"], t["explainer"], metric)]
        kept.append(t[np.asarray(mine, dtype=bool)])
    return pd.concat(kept, ignore_index=True) if kept else None


def _overlap(scores: list[pd.DataFrame], owners: dict[tuple[str, str, str, str], int]) -> dict[str, Any]:
    """Rows scored in more than one part: per metric their count and largest |difference|."""
    keys = SCORE_KEY
    tagged = pd.concat([s.assign(_part=k) for k, s in enumerate(scores)], ignore_index=True)
    tagged = tagged[tagged["status"] == "ok"]
    out: dict[str, Any] = {}
    for metric, g in tagged.groupby("metric", sort=True):
        wide = g.pivot_table(index=keys[:3] + keys[4:], columns="_part", values="value", aggfunc="first")
        both = wide[wide.notna().sum(axis=1) > 1]
        if len(both):
            spread = (both.max(axis=1) - both.min(axis=1)).abs()
            out[str(metric)] = {"rows": int(len(both)), "max_abs_diff": float(spread.max())}
    return out


def _curve_metric(scores: pd.DataFrame, curves: list[pd.DataFrame | None]) -> dict[str, str]:
    """{curve name: the metric that draws it} (``deletion`` -> ``deletion_auc``, ``road_morf`` itself)."""
    metrics = set(scores["metric"])
    names = {c for t in curves if t is not None and len(t) for c in set(t["curve"])}
    return {c: c if c in metrics else next((m for m in sorted(metrics) if m.startswith(f"{c}_")), c) for c in names}


def _combine(cfg: RunConfig, parts: list[tuple[str, RunConfig]], parent: Path, say: Callable[[str], None]) -> Path:
    records = _records(cfg, parts)
    names = relabels(cfg, parts)
    checkpoints = _check_models(parts, records, names)
    dirs = [part_dir(p) for _, p in parts]
    score_list = [_renamed(read_scores(table_path(d, "scores.csv")), r) for d, r in zip(dirs, names)]
    # the owner of each (model, stage, explainer, metric): the part with the most images of it
    owners: dict[tuple[str, str, str, str], int] = {}
    counts: dict[tuple[str, str, str, str], int] = {}
    for k, s in enumerate(score_list):
        for raw, n in s.groupby(OWNER_KEY)["image"].nunique().items():
            m, st, e, metric = (str(x) for x in raw)
            key = (m, st, e, metric)
            if int(n) > counts.get(key, 0):
                owners[key], counts[key] = k, int(n)
    merged = pd.concat(score_list, ignore_index=True)
    tables: dict[str, pd.DataFrame | None] = {}
    measured = {name: [_relabel(_read_csv(table_path(d, name)), r) for d, r in zip(dirs, names)] for name in MEASURED}
    curve_metric = _curve_metric(merged, measured["curves.csv"] + measured["substrate_curves.csv"])
    tables["scores"] = _owned(score_list, owners, "metric", {})
    for name in ("substrates.csv", "curves.csv", "substrate_curves.csv"):
        tables[name.removesuffix(".csv")] = _owned(measured[name], owners, OWNED_BY[name], curve_metric)
    for name in ("meta.csv", "meta_scores.csv"):
        found = [t for t in measured[name] if t is not None and len(t)]
        tables[name.removesuffix(".csv")] = pd.concat(found, ignore_index=True).drop_duplicates() if found else None
    tables["sample"] = _sample(measured["sample.csv"])
    tables["similarity"] = _similarity(cfg, parts, dirs, names, measured["similarity.csv"], tables["scores"])
    prepost = _prepost(dirs, names)
    examples = _examples(dirs, names)
    overlap = _overlap(score_list, owners)
    manifest = _manifest(cfg, parts, records, checkpoints, overlap)
    atomic_write_json(parent / MARKER, {**manifest, "status": "running"})  # the settings rebuild reads
    scores_table = tables.pop("scores")
    assert scores_table is not None
    written = write_outputs(
        parent,
        {"scores": _sorted(scores_table, SCORE_KEY), **{k: v for k, v in tables.items() if v is not None}},
        prepost,
        examples,
        figures=cfg.figures.enabled,
    )
    atomic_write_json(
        parent / MARKER, {**manifest, "files": sorted(str(p.relative_to(parent)) for p in [*written, parent / REPORT])}
    )
    write_html_report(parent)
    n = scores_table.groupby(["model", "stage"])["image"].nunique()
    say(f"combined {len(parts)} parts into {parent}: " + ", ".join(f"{m} {s} {k} images" for (m, s), k in n.items()))
    return parent


def _sorted(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def _sample(samples: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """Each architecture's sampling design from the part that explained the most of its images."""
    best: dict[str, pd.DataFrame] = {}
    for t in samples:
        if t is None:
            continue
        for arch, g in t.groupby("arch", sort=True):
            if str(arch) not in best or g["n_sampled"].sum() > best[str(arch)]["n_sampled"].sum():
                best[str(arch)] = g
    return pd.concat([best[a] for a in sorted(best)], ignore_index=True) if best else None


def _similarity(
    cfg: RunConfig,
    parts: list[tuple[str, RunConfig]],
    dirs: list[Path],
    names: list[dict[str, str]],
    tables: list[pd.DataFrame | None],
    scores: pd.DataFrame | None,
) -> pd.DataFrame | None:
    """The parts' own similarity rows (relabelled) and the seed-vs-seed rows of models explained in
    different parts, from their maps.npz."""
    found = [t for t in tables if t is not None and len(t)]
    maps: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    part_of: dict[str, int] = {}
    arch_seed: dict[str, tuple[str, int]] = {}
    for k, ((_, part), d, rename) in enumerate(zip(parts, dirs, names)):
        for arch in part.models.names:
            for seed in training_seeds(part):
                arch_seed[rename[model_label(part, arch, seed)]] = (arch, seed)
        if (d / MAPS).is_file():
            for (model, explainer), value in read_maps(d / MAPS).items():
                label = rename.get(model, model)
                if (label, explainer) not in maps or len(value[0]) > len(maps[(label, explainer)][0]):
                    maps[(label, explainer)], part_of[label] = value, k
    if maps and scores is not None:
        pre = scores[scores["stage"] == "pre"]
        cells = {str(m): dict(zip(g["image"].astype(int), g["cell"].astype(str))) for m, g in pre.groupby("model")}
        extra = seed_similarity(maps, arch_seed, cells, cfg.metrics.attribution)
        found.append(extra)
    if not found:
        return None
    out = pd.concat(found, ignore_index=True)
    out = out.drop_duplicates(subset=["model", "explainer", "comparison", "image"], keep="first")
    return _sorted(out, ["model", "explainer", "comparison", "image"])


def _prepost(dirs: list[Path], names: list[dict[str, str]]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for d, rename in zip(dirs, names):
        path = d / "prepost_models.json"
        if path.is_file():
            for key, value in json.loads(read_regular(path)).items():
                label, sep, rest = key.partition(" · ")
                out.setdefault(f"{rename.get(label, label)}{sep}{rest}", value)
    return out or None


def _examples(dirs: list[Path], names: list[dict[str, str]]) -> AttributionExamples | None:
    """Each model's example images and maps from the part that holds the most maps of it, with the
    maps of other parts (other explainers or stages) on the same images added."""
    found: dict[str, list[Any]] = {}
    for d, rename in zip(dirs, names):
        path = d / "attributions.npz"
        if path.is_file():
            for model, ex in plots.load_attribution_examples(path).models.items():
                found.setdefault(rename.get(model, model), []).append(ex)
    models: dict[str, Any] = {}
    for label, options in found.items():
        best = max(options, key=lambda ex: len(ex.maps))  # the first of the largest
        maps, cells = dict(best.maps), dict(best.cells)
        for ex in options:
            if ex is not best and np.array_equal(ex.index, best.index):
                for key, value in ex.maps.items():
                    maps.setdefault(key, value)
                for stage, value in ex.cells.items():
                    cells.setdefault(stage, value)
        models[label] = replace(best, maps=maps, cells=cells)
    return AttributionExamples(models=models) if models else None


def _manifest(
    cfg: RunConfig,
    parts: list[tuple[str, RunConfig]],
    records: list[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    overlap: dict[str, Any],
) -> dict[str, Any]:
    """The study's record: its config, every part's provenance and cost, the combined totals."""
    first = records[0]
    wall: dict[str, float] = {}
    for r in records:
        for k, v in (r.get("wall_seconds") or {}).items():
            wall[k] = round(wall.get(k, 0.0) + float(v), 2)
    floor = [((r.get("cost") or {}).get("explain_and_metrics") or {}) for r in records]
    floor_s = sum(float(f.get("floor_seconds") or 0) for f in floor)
    wall_s = sum(float(f.get("wall_seconds") or 0) for f in floor)
    units = {
        "total": sum((r.get("units") or {}).get("total", 0) for r in records),
        "from_cache": sum((r.get("units") or {}).get("from_cache", 0) for r in records),
        "reference": sum((r.get("units") or {}).get("reference", 0) for r in records),
        "failed": [u for r in records for u in (r.get("units") or {}).get("failed", [])],
    }
    return {
        "kind": KIND,
        "status": DONE,
        "config": cfg.to_dict(),
        "config_source": cfg.source,
        "command": f"python -m bench run --config {cfg.source}",
        "versions": package_versions(),
        "platform": first.get("platform") or machine_info(),
        "device": first.get("device"),
        "executor": first.get("executor"),
        "git": git_commit(),
        "data": first.get("data"),
        "checkpoints": sorted(checkpoints, key=lambda c: (c["model"], c["stage"])),
        "wall_seconds": wall,
        "cost": {
            "explain_and_metrics": {
                "wall_seconds": round(wall_s, 2),
                "floor_seconds": round(floor_s, 2),
                "ratio": round(wall_s / floor_s, 3) if floor_s else None,
            }
        },
        "units": units,
        "overlap": overlap,
        "parts": [
            {
                "part": name,
                "run": f"parts/{name}",
                "git": r.get("git"),
                "platform": r.get("platform"),
                "data_md5": (r.get("data") or {}).get("md5"),
                "selection": r.get("selection"),
                "checkpoints": [
                    {"model": c.get("model"), "stage": c.get("stage"), "sha256": c.get("sha256")}
                    for c in r.get("checkpoints") or []
                ],
                "wall_seconds": r.get("wall_seconds"),
                "cost": (r.get("cost") or {}).get("explain_and_metrics"),
            }
            for (name, _), r in zip(parts, records)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.run.parts export PART_FOLDER DEST``: :func:`export_part`."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m bench.run.parts", description="export a finished part of a study")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="copy what combining reads (tables gzipped, maps) into DEST")
    ex.add_argument("part_folder")
    ex.add_argument("dest")
    args = ap.parse_args(argv)
    try:
        for path in export_part(args.part_folder, args.dest):
            print(path)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
