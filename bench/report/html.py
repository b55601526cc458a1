"""A run folder -> one self-contained ``report.html`` (provenance, tables, figures).

:func:`write_html_report` reads only files already in the run folder -- ``manifest.json``, the CSV
sources of the Markdown tables (``leaderboard.csv``, ``prepost.csv``, ``prepost_by_cell.csv``,
``prepost_models.json``, ``reliability*.csv``, the stability tables, ``baseline_substrate.csv``) and
``figures/*.png`` -- and writes one page that needs nothing else: the figures are embedded as base64
``data:`` PNGs, the CSS and a small vanilla-JS table sorter are inline, and a
Content-Security-Policy forbids every other load (no network, no other file). With the run config's
``report.self_contained = false`` the page instead links ``figures/*.png`` and the long detail
tables' CSV files beside it (CSP ``img-src 'self'``), for studies whose embedded page would be tens
of MB. Every string taken from a file is HTML-escaped. The page is deterministic: no timestamp, no
path of the run folder, manifest keys and figures in sorted order, so ``python -m bench report``
rebuilds it byte for byte (:func:`bench.report.rebuild.rebuild` writes it last).

The page leads with the answer. Sections, in order: the verdict (the seed-pooled leaderboards
of ``leaderboard_pooled.csv`` when the run trained several seeds, else the run's own; explainers in
reading order and metrics passing the reliability card first, :mod:`bench.report.format`; cells
"mean (rank letters)" over the CI; the card's ⚠ marks with their reasons; the critical-difference
figure), then per model and stage a folded block (its leaderboard when the verdict is pooled, the
tests behind it, its reliability card, its figures), pre vs post (folded per model), the card's
detail tables, the baseline x substrate interaction (folded per model and stage), stability, the
remaining figures (folded per kind), provenance. Every figure appears once. Colours are Okabe-Ito
(colour-blind safe): rank 1 on a sky-blue tint, errors in vermillion, metrics that fail the card on
an orange tint. Wide tables scroll inside their own box.
"""

from __future__ import annotations

import base64
import json
import struct
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_write_text
from bench.core.schema import move_cells, stage_key
from bench.core.text import fmt_number
from bench.report import baseline_substrate
from bench.report.format import SCALARS, arrow, card_fails, metric_order, rank_order, rank_text, slug
from bench.report.leaderboard import (
    LEADERBOARD_COLUMNS,
    LEADERBOARD_HEAD,
    PREPOST_BY_CELL_COLUMNS,
    PREPOST_COLUMNS,
    read_prepost_models,
)
from bench.report.reliability import TRUTH_LEGEND
from bench.report.stability import arch_and_seed

__all__ = ["REPORT", "read_manifest", "read_table", "render_html_report", "write_html_report"]

REPORT = "report.html"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# columns shown as text, never parsed as numbers
TEXT_COLUMNS = frozenset(
    {
        "model",
        "stage",
        "explainer",
        "metric",
        "status",
        "message",
        "verdict",
        "cell",
        "control",
        "better",
        "worse",
        "metric_a",
        "metric_b",
        "substrate_a",
        "substrate_b",
        "expected",
        "top",
        "stage_a",
        "stage_b",
        "comparison",
        "group",
        "reference",
        "test",
        "post_stage",
        "substrate",
        "curve",
        "beat_random",
        "a",
        "b",
        "letters",
        "aliases",
        "family",
        "method",
        "not_separated_from_top",
        "alias",
        "baseline_a",
        "baseline_b",
        "also_differs",
        "truth",
    }
)
# long text: wraps inside its cell
WRAP_COLUMNS = frozenset({"status", "message", "verdict", "family", "not_separated_from_top", "truth"})
NEGATIVE_IS_NA = frozenset({"beat_random_a", "beat_random_b"})  # -1 stands for "does not apply"
HEADERS = {
    "seconds_per_image": "s/image",
    "peak_mem_mb": "peak MB",
    "p_adj": "adj. p",
    "p_equiv": "equiv. p",
    "n_pairs": "n",
    "pre_mean": "pre",
    "post_mean": "post",
    "diff_mean": "diff",
    "mean_a": "a mean",
    "mean_b": "b mean",
    "kendall_w": "Kendall's W",
    "kendall_tau": "Kendall's tau",
    "mde": "MDE",
    "mde_median": "MDE",
    "n_needed_max": "n needed",
    "alpha": "alpha",
    "p_top_stays": "P(top stays)",
    "meta_input": "MetaQuantus input",
    "meta_model": "MetaQuantus model",
    "iac_nr": "IAC NR",
    "iac_ar": "IAC AR",
    "iec_nr": "IEC NR",
    "iec_ar": "IEC AR",
    "mc": "MC",
    "top_overlap": "top-15% overlap",
    "control_beats_real": "control beats a method",
    "disagreements": "disagree",
    "substrate_tau_min": "substrate tau",
    "n_images": "images",
    "n_explainers": "explainers",
    "n_seeds": "seeds",
    "reference_mean": "reference mean",
    "stage_a": "a",
    "stage_b": "b",
    "a_on_a": "a on A",
    "b_on_a": "b on A",
    "a_on_b": "a on B",
    "b_on_b": "b on B",
    "interaction": "I",
    "baseline_a": "A (a's baseline)",
    "baseline_b": "B (b's baseline)",
    "pseudo_median": "pseudo-median",
}

FIGURE_KINDS = {  # file-name prefix -> (heading, what the figure shows), as plots.py draws them
    "attributions": (
        "Attribution maps",
        "TP/FP/FN/TN examples (cell under the pre model): the image beside its pre "
        "and post maps, all on one symmetric colour scale with a numeric colour bar (RdBu_r).",
    ),
    "cd": (
        "Critical-difference diagrams",
        "Per metric, each explainer at its mean per-image rank (1 = best); a bar "
        "joins explainers the table's paired tests (max-T over the table's pairs) do not separate. The seed-"
        "pooled diagrams use the crossed image x seed tests.",
    ),
    "curves": (
        "Deletion and insertion curves",
        "Per explainer the mean probability over images at each fraction, "
        "with a light 95% normal band; each explainer keeps its colour, line style and marker in every "
        "figure.",
    ),
    "leaderboard": (
        "Leaderboard heatmaps",
        "Explainers (in reading order) × metrics; colour = the cell's place "
        "between the worst (0) and best (1) mean of its column, text = mean and the paired tests' rank and "
        "letters, bold at rank 1; ⚠ marks a metric that fails its reliability card.",
    ),
    "prepost": ("Pre vs post", "Per metric, each explainer's pre and post mean with its 95% CI."),
    "reliability": (
        "Reliability card",
        "Metrics × criteria on one −1..1 diverging scale (1 = reliable); blank where "
        "a criterion does not apply to a metric; a criterion the run did not compute is left out and "
        "named in the title.",
    ),
    "similarity": ("Map similarity", "Pre vs post map similarity next to retraining and explainer noise."),
    "substrates": (
        "Substrate sensitivity",
        "Mean perturbation curves per curve and substrate, a line per explainer; "
        "a panel without data is left out and named in the title.",
    ),
}


# ----------------------------------------------------------------------------- reading


def read_table(path: Path) -> pd.DataFrame | None:
    """A derived CSV table as text (None when absent): every cell a string, "" where empty.

    Text stays as written ("n/a" stays "n/a", a model called "null" stays "null"); the page
    formats the numeric columns itself (:func:`_cell`).
    """
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BenchError(
            f"{path} is not a readable CSV ({one_line(e, 200)}); run `python -m bench report "
            f"{path.parent}` to rewrite it from scores.csv"
        ) from None


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``manifest.json`` (None when absent); a damaged one is a one-line error naming it."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BenchError(
            f"{path} is not valid JSON ({one_line(e, 120)}); re-run the benchmark to rewrite it, or "
            f"move it away to build the report without provenance"
        ) from None
    if not isinstance(obj, dict):
        raise BenchError(f"{path} must hold a JSON object; re-run the benchmark to rewrite it")
    return obj


def _bool(x: Any) -> bool:
    return str(x).strip().lower() in ("true", "1", "1.0")


def _read_board(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "leaderboard.csv"
    board = read_table(path)
    if board is None:
        return None
    missing = [c for c in LEADERBOARD_COLUMNS if c not in board.columns]
    if missing:
        raise BenchError(
            f"{path} lacks column(s) {missing}; run `python -m bench report {run_dir}` to rewrite it from scores.csv"
        )
    for c in (
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "rank",
        "mean_rank",
        "mean_test",
        "mean_test_ci_low",
        "mean_test_ci_high",
        "seconds_per_image",
        "peak_mem_mb",
    ):
        board[c] = pd.to_numeric(board[c], errors="coerce")  # "" -> NaN (replace("", nan) warns on pandas 2.2)
    board["rank"] = board["rank"].astype("Int64")
    board["letters"] = board["letters"].fillna("").astype(str)
    board["aliases"] = board["aliases"].fillna("").astype(str)
    board["higher_is_better"] = board["higher_is_better"].map(_bool)
    return board


def _read_card(run_dir: Path) -> dict[str, pd.DataFrame] | None:
    """The reliability card's tables by name (``reliability`` and its details), None without ``reliability.csv``."""
    if not (run_dir / "reliability.csv").is_file():
        return None
    names = ["reliability"] + sorted(p.stem for p in run_dir.glob("reliability_*.csv"))
    return {n: t for n in names if (t := read_table(run_dir / f"{n}.csv")) is not None}


# ----------------------------------------------------------------------------- html pieces


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


class _Cell:
    """One table cell: its HTML, a numeric sort key (None: sorts as text; NaN: sorts last), a class."""

    __slots__ = ("html", "key", "cls", "attrs")

    def __init__(self, text: str, key: float | None = None, cls: str = "", attrs: str = "", *, raw: bool = False):
        self.html = text if raw else _e(text)
        self.key, self.cls, self.attrs = key, cls, attrs

    def td(self) -> str:
        cls = f' class="{self.cls}"' if self.cls else ""
        key = "" if self.key is None else f' data-v="{_sort_key(self.key)}"'
        attrs = f" {self.attrs}" if self.attrs else ""
        return f"<td{cls}{key}{attrs}>{self.html}</td>"


def _sort_key(v: float) -> str:
    v = float(v)
    return "" if np.isnan(v) else repr(v)


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[_Cell]],
    *,
    attrs: str = "",
    row_attrs: Sequence[str] | None = None,
    header_html: bool = False,
) -> str:
    """A sortable table in its own horizontally scrolling box."""
    head = "".join(f'<th scope="col">{h if header_html else _e(h)}</th>' for h in header)
    body = [
        f"<tr{' ' + row_attrs[i] if row_attrs else ''}>" + "".join(c.td() for c in r) + "</tr>"
        for i, r in enumerate(rows)
    ]
    a = f" {attrs}" if attrs else ""
    return (
        f'<div class="scroll"><table class="sortable"{a}><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _num(x: Any, spec: str = ".4g") -> _Cell:
    """A number (right-aligned, sorts numerically); "n/a" when missing or not finite."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        v = float("nan")
    text = fmt_number(v, spec, inf="∞")
    return _Cell(text, v, "na num" if text == "n/a" else "num")


def _cell(column: str, value: str) -> _Cell:
    """A CSV value formatted for its column: text as text, numbers with 4 significant digits (p-values 3)."""
    if column in TEXT_COLUMNS:
        return _Cell(value, cls="msg" if column in WRAP_COLUMNS else "")
    if value in ("True", "False"):
        return _Cell("yes" if value == "True" else "no")
    try:
        v = float(value) if value != "" else float("nan")
    except ValueError:
        return _Cell(value)
    if column in NEGATIVE_IS_NA and v < 0:
        return _Cell("n/a", float("nan"), "na num")
    return _num(v, ".3g" if column.startswith("p_") else ".0f" if column == "n" or column.startswith("n_") else ".4g")


def _with_ci(value_html: str, low_html: str, high_html: str) -> str:
    """A value with its CI on a second, smaller line (keeps wide tables narrow)."""
    return f'{value_html}<br><span class="ci">[{low_html}, {high_html}]</span>'


def _frame_table(df: pd.DataFrame, *, drop: Iterable[str] = ()) -> str:
    """A CSV table as a sortable HTML table: a column ``x`` followed by ``..ci_low``/``..ci_high``
    becomes one "x [95% CI]" column (sorted on x); ``higher_is_better`` becomes an arrow after the metric."""
    cols = [c for c in df.columns if c not in set(drop)]
    hib = "higher_is_better" in cols and "metric" in cols
    if hib:
        cols.remove("higher_is_better")
    spans: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(cols):
        c = cols[i]
        if i + 2 < len(cols) and cols[i + 1].endswith("ci_low") and cols[i + 2].endswith("ci_high"):
            spans.append((f"{HEADERS.get(c, c.replace('_', ' '))} [95% CI]", cols[i : i + 3]))
            i += 3
        else:
            spans.append((HEADERS.get(c, c.replace("_", " ")), [c]))
            i += 1
    rows = []
    for r in df.to_dict("records"):
        cells = []
        for _, src in spans:
            if len(src) == 3:
                v, lo, hi = (_cell(s, r[s]) for s in src)
                text = _with_ci(v.html, lo.html, hi.html) if v.html != "n/a" else "n/a"
                cells.append(_Cell(text, v.key, v.cls, raw=True))
            elif src[0] == "metric" and hib:
                cells.append(_Cell(f"{r['metric']} {arrow(_bool(r['higher_is_better']))}"))
            else:
                cells.append(_cell(src[0], r[src[0]]))
        rows.append(cells)
    return _table([h for h, _ in spans], rows)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def _p(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>\n{body}\n</details>"


def _folded(summary: str, table: pd.DataFrame, csv_name: str, embed: bool) -> str:
    """A long detail table: folded into the page (``embed``), or a link to its CSV file beside the page."""
    if embed:
        return _details(summary, _frame_table(table))
    return f'<p class="note">{_e(summary)}: <a href="{_href(csv_name)}">{_e(csv_name)}</a></p>'


def _href(name: str) -> str:
    """A file beside the page (or under it) as a relative URL."""
    return _e(quote(name))


def _self_contained(manifest: Mapping[str, Any] | None) -> bool:
    """The run config's ``report.self_contained`` (true when the manifest does not say)."""
    value = _get(_get(_get(manifest, "config"), "report"), "self_contained")
    return value is not False


# ----------------------------------------------------------------------------- provenance


def _text(x: Any) -> str:
    return "n/a" if x is None or x == "" else str(x)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def _provenance(run_dir: Path, manifest: Mapping[str, Any] | None) -> str:
    if manifest is None:
        return _section(
            "provenance",
            "Provenance",
            _p("manifest.json not found: the run's provenance (commit, data, checkpoints, versions) is unknown."),
        )
    parts = []
    status = _get(manifest, "status")
    if status != "complete":
        parts.append(
            f'<p class="banner">manifest.json has status {_e(_text(status))}: the run has not finished '
            f"writing it, so the provenance below is incomplete. <code>python -m bench report</code> on this "
            f"folder after the run has finished rewrites this page.</p>"
        )
    git, data, units = _get(manifest, "git"), _get(manifest, "data"), _get(manifest, "units")
    official = _get(data, "md5_official")
    badge = (
        '<span class="okbadge">official</span>'
        if official is True
        else f'<span class="warnbadge">not official</span> (official MD5 <code>'
        f"{_e(_text(_get(data, 'official_md5')))}</code>)"
        if official is False
        else ""
    )
    wall = _get(manifest, "wall_seconds")
    wall = wall if isinstance(wall, Mapping) else {}
    stages = ", ".join(f"{k} {fmt_number(v, '.4g')} s" for k, v in sorted(wall.items()) if k != "total")
    platform = _get(manifest, "platform")
    cuda = _get(manifest, "cuda_device")
    rows = [
        ("run", _e(_text(_get(_get(manifest, "config"), "name") or run_dir.name))),
        ("status", _e(_text(status))),
        ("command", f"<code>{_e(_text(_get(manifest, 'command')))}</code>"),
        (
            "git commit",
            f"<code>{_e(_text(_get(git, 'commit')))}</code>"
            + (" (with uncommitted changes)" if _get(git, "dirty") else ""),
        ),
        (
            "data",
            _e(f"{_text(_get(data, 'dataset'))} · {_text(_get(data, 'split'))} split · n = {_text(_get(data, 'n'))}"),
        ),
        ("data file", f"<code>{_e(_text(_get(data, 'source')))}</code>"),
        ("data MD5", f"<code>{_e(_text(_get(data, 'md5')))}</code> {badge}"),
        (
            "device",
            _e(
                f"{_text(_get(manifest, 'device'))}{f' ({cuda})' if cuda else ''} · executor "
                f"{_text(_get(manifest, 'executor'))}"
            ),
        ),
        (
            "machine",
            _e(
                " · ".join(f"{k} {_text(v)}" for k, v in sorted(platform.items()))
                if isinstance(platform, Mapping)
                else _text(platform)
            ),
        ),
        ("wall time", _e(f"{fmt_number(_get(wall, 'total'), '.4g')} s total" + (f" ({stages})" if stages else ""))),
        (
            "units",
            _e(
                f"{_text(_get(units, 'total'))} total, {_text(_get(units, 'from_cache'))} from cache, "
                f"{len(_get(units, 'failed') or [])} failed"
            )
            if isinstance(units, Mapping)
            else "n/a",
        ),
    ]
    parts.append('<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>")
    checkpoints = _get(manifest, "checkpoints")
    if isinstance(checkpoints, list) and checkpoints:
        rows_ = [
            [
                _Cell(_text(_get(c, "model"))),
                _Cell(_text(_get(c, "stage"))),
                _Cell(f"<code>{_e(_text(_get(c, 'sha256')))}</code>", raw=True),
            ]
            + [_num(_get(_get(c, "test"), k)) for k in ("acc", "auc", "sensitivity", "specificity")]
            for c in checkpoints
        ]
        parts.append(
            "<h3>Checkpoints</h3>"
            + _table(["model", "stage", "sha256", "test ACC", "test AUC", "sensitivity", "specificity"], rows_)
        )
    versions = _get(manifest, "versions")
    if isinstance(versions, Mapping) and versions:
        parts.append(
            _details(
                f"Package versions ({len(versions)})",
                _table(["package", "version"], [[_Cell(k), _Cell(_text(v))] for k, v in sorted(versions.items())]),
            )
        )
    return _section("provenance", "Provenance", "\n".join(parts))


# ----------------------------------------------------------------------------- verdict and details


def _score_cell(r: Mapping[str, Any], metric: str) -> _Cell:
    """A leaderboard cell: "mean (rank letters)" over its CI (second line); sorts on the mean; rank 1 tinted."""
    status = str(r.get("status", "ok"))
    attrs = f'data-metric="{_e(metric)}"'
    if status.startswith("error"):
        return _Cell("error", float("nan"), "err num", attrs)
    if status == "n/a" or not np.isfinite(float(r["mean"])):
        return _Cell("n/a", float("nan"), "na num", attrs)
    rank = rank_text(r["rank"], r["letters"])
    head = fmt_number(r["mean"]) + (f" ({rank})" if rank else "")
    text = _with_ci(_e(head), _e(fmt_number(r["ci_low"])), _e(fmt_number(r["ci_high"])))
    first = not pd.isna(r["rank"]) and int(r["rank"]) == 1
    return _Cell(text, float(r["mean"]), "r1 num" if first else "num", attrs, raw=True)


def _finite(x: pd.Series, how: str) -> float:
    a = x.to_numpy(dtype=np.float64)
    a = a[np.isfinite(a)]
    return float("nan") if a.size == 0 else float(a.mean() if how == "mean" else a.max())


def _tests_notes(
    comparisons: pd.DataFrame | None, friedman: pd.DataFrame | None, model: str, stage: str, metrics: list[str]
) -> list[str]:
    """Per metric: its family, Friedman's test and the pairs shown equivalent (as in leaderboard.md)."""
    if comparisons is None:
        return []
    out = []
    for m in metrics:
        p = comparisons[
            (comparisons["model"] == model) & (comparisons["stage"] == stage) & (comparisons["metric"] == m)
        ]
        if not len(p):
            continue
        text = f"{m}: {p['family'].iloc[0]}"
        if friedman is not None:
            f = friedman[(friedman["model"] == model) & (friedman["stage"] == stage) & (friedman["metric"] == m)]
            if len(f) and np.isfinite(pd.to_numeric(f["chi2"], errors="coerce").iloc[0]):
                text += f"; Friedman chi2 = {fmt_number(f['chi2'].iloc[0])}, p = {fmt_number(f['p'].iloc[0], '.3g')}"
        eq = p[p["verdict"] == "equivalent"]
        text += "; equivalent: " + (", ".join(f"{a} ≡ {b}" for a, b in zip(eq["a"], eq["b"])) if len(eq) else "none")
        out.append(_p(text + "."))
    return out


def _by_stage(frame: pd.DataFrame) -> Iterable[tuple[str, str, pd.DataFrame]]:
    """(model, stage, rows) in model order, stages pre, post, post:<variant>."""
    f = frame.assign(_stage=frame["stage"].map(stage_key))
    for (model, _, stage), sub in f.groupby(["model", "_stage", "stage"], sort=True):
        yield str(model), str(stage), sub.drop(columns="_stage")


def _board_table(sub: pd.DataFrame, fails: Mapping[str, str], attrs: str, *, costs: bool) -> str:
    """One leaderboard: explainers in reading order (rows), metrics passing the card first (columns);
    with ``costs`` the run's s/image, peak MB and status columns."""
    metrics = metric_order(sub["metric"], fails)
    hib = sub.groupby("metric")["higher_is_better"].first()
    header = (
        ["explainer"]
        + [
            f'<span class="{"warn" if m in fails else "h"}">{_e(m).replace("_", "_<wbr>")} {arrow(bool(hib[m]))}'
            + (' <span title="fails its reliability card">⚠</span>' if m in fails else "")
            + "</span>"
            for m in metrics
        ]
        + (["s/image", "peak MB", "status"] if costs else [])
    )
    groups = dict(list(sub.groupby("explainer", sort=True)))
    rows, row_attrs = [], []
    for explainer in rank_order(sub, fails):
        e = groups[explainer]
        by_metric = e.set_index("metric")
        alias = str(e["aliases"].iloc[0])
        name = _e(explainer) + (f'<br><span class="ci">= {_e(alias)}</span>' if alias else "")
        cells = [_Cell(name, cls="name", raw=True)]
        for m in metrics:
            cells.append(
                _score_cell(by_metric.loc[m], m)
                if m in by_metric.index
                else _Cell("—", float("nan"), "na num", f'data-metric="{_e(m)}"')
            )
        if costs:
            errors = sorted({s for s in e["status"] if s.startswith("error")})
            cells += [
                _num(_finite(e["seconds_per_image"], "mean"), ".3g"),
                _num(_finite(e["peak_mem_mb"], "max"), ".1f"),
                _Cell("; ".join(errors) or "ok", cls="msg err" if errors else "msg"),
            ]
        rows.append(cells)
        row_attrs.append(f'data-explainer="{_e(explainer)}"')
    return _table(header, rows, attrs=attrs, row_attrs=row_attrs, header_html=True)


def _fail_notes(fails: Mapping[str, str], metrics: Iterable[str]) -> list[str]:
    return [f'<p class="warn">⚠ {_e(m)}: {_e(fails[m])}</p>' for m in metric_order(metrics, fails) if m in fails]


def _pooled_fails(
    card: Mapping[str, pd.DataFrame] | None, models: Iterable[str], arch: str, stage: str
) -> dict[str, str]:
    """The card's marks for a pooled table: a metric that fails the card of any seed's model, with each reason."""
    reasons: dict[str, list[str]] = {}
    for model in sorted(m for m in set(models) if arch_and_seed(m)[0] == arch):
        for metric, why in card_fails(card, model, stage).items():
            reasons.setdefault(metric, []).append(f"{model}: {why}")
    return {m: "; ".join(r) for m, r in reasons.items()}


def _verdict(
    board: pd.DataFrame | None,
    pooled: pd.DataFrame | None,
    card: Mapping[str, pd.DataFrame] | None,
    figures: "_Figures",
) -> str:
    """The answer first: the pooled leaderboards (several seeds) or the run's own, with the card's marks and
    the critical-difference figure."""
    if board is None:
        return _section("verdict", "Verdict", _p("leaderboard.csv not found."))
    read = (
        "Rows: the explainers in reading order, by the mean of their ranks over the metrics that pass the "
        "reliability card (an order to read in, not a test: the verdicts are each column's rank and letters). "
        "Cells: mean (rank letters), its 95% interval below; rank 1 is tinted; two explainers sharing a letter "
        "are not separated by the paired tests at this n (not separable, which is not equal). Columns: the "
        "metrics that pass the card first"
        + ("; ⚠: fails it (why: under the table)" if card is not None else "")
        + ". ↑ higher is better, ↓ lower is better. Click a column header to sort."
    )
    parts = []
    if pooled is not None:
        parts.append(
            _p(
                "Pooled over the training seeds (each seed's own tables: by model and stage, below): intervals "
                "from the crossed image × seed model, ranks and letters from the pooled paired tests. " + read
            )
        )
        tables = [(m, s, sub, _pooled_fails(card, board["model"], m, s), False) for m, s, sub in _by_stage(pooled)]
    else:
        parts.append(_p(read))
        tables = [(m, s, sub, card_fails(card, m, s), True) for m, s, sub in _by_stage(board)]
    for i, (model, stage, sub, fails, single) in enumerate(tables):
        attrs = (
            f'data-headline="1" data-board="1" data-model="{_e(model)}" data-stage="{_e(stage)}"'
            if single
            else f'data-headline="1" data-pooled="1" data-model="{_e(model)}" data-stage="{_e(stage)}"'
        )
        parts += [
            f"<h3>{_e(model)} · {_e(stage)}{' (pooled over seeds)' if not single else ''}</h3>",
            _board_table(sub, fails, attrs, costs=single),
        ]
        if not single:
            n = sub.groupby("explainer")[["n_seeds", "n_images"]].first()
            parts.append(
                _p(
                    f"n: {'/'.join(sorted({str(v) for v in n['n_seeds']}))} seeds × "
                    f"{'/'.join(sorted({str(v) for v in n['n_images']}))} images."
                )
            )
        parts += _fail_notes(fails, sub["metric"].unique())
        cd = figures.take("cd", model, stage)
        if cd:
            parts.append(
                f"<details{' open' if i == 0 else ''}><summary>Critical-difference diagram: "
                f"{_e(model)} · {_e(stage)}</summary>\n{_p(FIGURE_KINDS['cd'][1])}\n{cd}\n</details>"
            )
    return _section("verdict", "Verdict", "\n".join(parts))


def _details_by_table(
    board: pd.DataFrame | None,
    card: Mapping[str, pd.DataFrame] | None,
    comparisons: pd.DataFrame | None,
    friedman: pd.DataFrame | None,
    figures: "_Figures",
    with_tables: bool,
) -> str:
    """Per (model, stage), folded: its leaderboard (``with_tables``: when the verdict shows pooled tables),
    the tests behind it, its reliability card and its figures."""
    if board is None:
        return ""
    parts = [
        _p(
            LEADERBOARD_HEAD.replace("[95% t interval] (rank letters)", "(rank letters) over its 95% t interval")
            + (" ⚠: the metric fails its reliability card (reasons below the table)." if card is not None else "")
        )
    ]
    main = card["reliability"] if card is not None else None
    for model, stage, sub in _by_stage(board):
        fails = card_fails(card, model, stage)
        metrics = metric_order(sub["metric"], fails)
        body = []
        if with_tables:
            body.append(
                _board_table(
                    sub, fails, f'data-board="1" data-model="{_e(model)}" data-stage="{_e(stage)}"', costs=True
                )
            )
            body += _fail_notes(fails, metrics)
        ok = sub[sub["status"] == "ok"]
        if len(ok):
            ns = ok.groupby("metric")["n"].agg(lambda s: sorted({int(v) for v in s}))
            body.append(
                _p(
                    "n (finite values per metric): "
                    + ", ".join(f"{m} {'/'.join(map(str, ns[m]))}" for m in metrics if m in ns.index)
                )
            )
        body += _tests_notes(comparisons, friedman, model, stage, metrics)
        if main is not None:
            c = main[(main["model"] == model) & (main["stage"] == stage)]
            if len(c):
                body += ["<h4>Reliability card</h4>", _card_table(c)]
        body += [f for kind in DETAIL_KINDS if (f := figures.take(kind, model, stage))]
        marks = f" · ⚠ {len(fails)} of {len(metrics)} metrics fail the card" if fails else ""
        parts.append(
            f'<details class="table" id="t-{_e(slug(model, stage))}"><summary>{_e(model)} · {_e(stage)}: '
            f"{sub['explainer'].nunique()} explainers × {len(metrics)} metrics{_e(marks)}</summary>\n"
            + "\n".join(body)
            + "\n</details>"
        )
    return _section("details", "By model and stage", "\n".join(parts))


# ----------------------------------------------------------------------------- pre / post


def _prepost(run_dir: Path, embed: bool = True, figures: _Figures | None = None) -> str:
    table = read_table(run_dir / "prepost.csv")
    by_cell = read_table(run_dir / "prepost_by_cell.csv")
    pm = run_dir / "prepost_models.json"
    models = read_prepost_models(pm) if pm.is_file() else {}
    if table is None and not models:
        return ""
    parts = [
        _p(
            "Paired over the test images scored (status ok, finite) in both stages; n = pairs. diff = post − pre, "
            "the mean paired difference with its t interval at the family's level (diff_ci_*, level): it excludes "
            "0 exactly when the Bonferroni-adjusted p (adj. p) is below alpha; family: every row of the model's "
            "table; verdict: higher / lower after tuning, equivalent within the metric's margin (TOST), or not "
            "separable at this n."
        )
    ]
    table = table if table is not None else pd.DataFrame(columns=PREPOST_COLUMNS)
    by_cell = by_cell if by_cell is not None else pd.DataFrame(columns=PREPOST_BY_CELL_COLUMNS)
    if "post_stage" in table.columns:  # tuning variants: one block per (model, post stage), as in prepost.md
        table = table.assign(model=table["model"] + " · " + table["post_stage"]).drop(columns="post_stage")
    if "post_stage" in by_cell.columns:
        by_cell = by_cell.assign(model=by_cell["model"] + " · " + by_cell["post_stage"]).drop(columns="post_stage")
    for model in sorted(set(table["model"]) | set(models)):
        body = []
        sub = table[table["model"] == model]
        if model in models:
            body.append(_model_comparison(model, models[model]))
        if len(sub):
            moved = sub["verdict"].isin(["higher after", "lower after"]).sum()
            body += [
                f"<h4>Attribution metrics: {moved} of {len(sub)} rows moved</h4>",
                _frame_table(sub, drop=["model"]),
            ]
        cells = by_cell[(by_cell["model"] == model) & (by_cell["status"] == "ok")]
        if len(cells):
            body.append(
                _folded(
                    f"By cell of the pre model ({len(cells)} rows)",
                    cells.drop(columns="model"),
                    "prepost_by_cell.csv",
                    embed,
                )
            )
        if figures is not None and (fig := figures.take("prepost", model)):
            body.append(fig)
        parts.append(f'<details class="table"><summary>{_e(model)}</summary>\n' + "\n".join(body) + "\n</details>")
    return _section("prepost", "Pre vs post", "\n".join(parts))


def _model_comparison(model: str, comp: Any) -> str:
    """The classifier's own pre/post comparison (prepost_models.json), as in prepost.md."""
    if not isinstance(comp, Mapping):
        raise BenchError(
            f"prepost_models.json: the entry {model!r} must be an object with delta/mcnemar/cell_moves; "
            f"re-run the benchmark to rewrite it"
        )
    a, b = model.split(" · ", 1)[1].split(" vs ") if " vs " in model else ("pre", "post")
    pre, post, delta = (dict(comp.get(k) or {}) for k in ("test_pre", "test_post", "delta"))
    keys = [k for k in SCALARS if k in pre or k in post or k in delta]
    keys += sorted((set(pre) | set(post) | set(delta)) - set(keys))
    parts = [f"<h4>Classifier: {_e(a)} vs {_e(b)} (test split)</h4>"]
    if keys:
        parts.append(
            _table(
                ["metric", a, b, f"delta ({b} − {a})"],
                [[_Cell(k), _num(pre.get(k)), _num(post.get(k)), _num(delta.get(k), "+.4g")] for k in keys],
            )
        )
    mc = comp.get("mcnemar")
    if isinstance(mc, Mapping):
        parts.append(
            _p(
                f"McNemar exact test: b ({a} right, {b} wrong) = {mc.get('a_right_b_wrong', 'n/a')}, "
                f"c ({a} wrong, {b} right) = {mc.get('a_wrong_b_right', 'n/a')}, "
                f"p = {fmt_number(mc.get('p_value'), '.3g')}."
            )
        )
    moves = comp.get("cell_moves")
    if isinstance(moves, Mapping):
        parts.append(_p(f"Cell moves (rows: cell under the {a} model, columns: under the {b} model):"))
        cells = move_cells(moves)
        parts.append(
            _table(
                [f"{a} \\ {b}", *cells],
                [[_Cell(x)] + [_num((moves.get(x) or {}).get(y, 0), ".0f") for y in cells] for x in cells],
            )
        )
    return "\n".join(parts)


# ----------------------------------------------------------------------------- card, stability


CARD_DETAILS = {
    "reliability_agreement": "Agreement between metrics: Kendall's tau between the explainer rankings of two metrics, "
    "95% BCa CI over images",
    "reliability_controls": "Control separation: the table's own paired comparison of explainer and control "
    "(max-T over the table's pairs), its interval and verdict",
    "reliability_meta": "Noise resilience and adversary reactivity (MetaQuantus, Hedström et al. 2023)",
    "reliability_power": "Power: adjacent explainers in each metric's order: the smallest difference this n detects "
    "and the n the observed one needs",
    "reliability_substrate_controls": "Control separation under each substrate: the substrate's own paired tests "
    "(max-T over its pairs)",
    "reliability_substrates": "Substrate sensitivity: Kendall's tau between a metric's rankings under two substrates",
}


def _card_table(main: pd.DataFrame) -> str:
    """One (model, stage) of the reliability card: "k of N" real explainers beat random, the verdict next."""
    beat = pd.to_numeric(main["beat_random"], errors="coerce")
    main = main.assign(
        beat_random=["n/a" if not b >= 0 else f"{int(b)} of {n}" for b, n in zip(beat, main["real_explainers"])]
    )
    first = ["metric", "higher_is_better", "verdict", "truth"]
    main = main[[c for c in first if c in main] + [c for c in main.columns if c not in first]]
    empty = [c for c in ("meta_input", "meta_model", "substrate_tau_min") if c in main and not (main[c] != "").any()]
    return _frame_table(main, drop=["model", "stage", "real_explainers", *empty])


def _reliability(card: Mapping[str, pd.DataFrame] | None, embed: bool = True) -> str:
    if card is None:
        return ""
    parts = [
        _p(
            "Can each metric be trusted on this run? Each model and stage's card is in its fold above. beat "
            "random: distinct real explainers the table's paired test separates above `random` (of all distinct "
            "real ones); alpha: Krippendorff's alpha of the per-image rankings (0 = chance, 1 = every image ranks "
            "alike); split half: Spearman-Brown corrected reliability of the ranking; MDE: the smallest paired "
            "difference detectable at this n; n needed: the largest n an adjacent pair of the order needs for its "
            "observed difference. A criterion the run did not compute is left out. Details in reliability.md."
            + (TRUTH_LEGEND if "truth" in card["reliability"].columns else "")
        )
    ]
    for name in sorted(card):
        if name != "reliability" and len(card[name]):
            parts.append(
                _folded(f"{CARD_DETAILS.get(name, name)} ({len(card[name])} rows)", card[name], f"{name}.csv", embed)
            )
    return _section("reliability", "Reliability card", "\n".join(parts))


STABILITY = (  # (table, what it says, how: shown / folded / long: folded, or its CSV linked from a linked page)
    (
        "stability",
        "Do the rankings survive retraining? Kendall's W of the explainer rankings across training seeds, "
        "95% BCa CI over images resampled jointly under every seed (given these seeds), the W of the least "
        "agreeing pair of seeds; P(top stays) under the crossed image x seed model; the explainers the "
        "pooled paired tests do not separate from the top.",
        "shown",
    ),
    (
        "leaderboard_pooled",
        "Pooled leaderboard: mean over seeds and images with its 95% crossed-model t interval; rank "
        "and letters from the pooled paired tests",
        "long",
    ),
    (
        "comparisons_pooled",
        "Pooled paired comparisons: every pair of explainers per architecture, stage and metric "
        "(crossed image x seed model, max-T over the table's pairs)",
        "long",
    ),
    (
        "variants",
        "Tuning policies against each other: paired differences b − a with their t interval at the family's "
        "level, Bonferroni-adjusted p, verdict",
        "folded",
    ),
    (
        "similarity_tests",
        "Did tuning change what the model looks at, beyond noise? Pre-vs-post map similarity against "
        "retraining and explainer noise: diff = tuning − reference; rows with seeds > 1 pool the "
        "seeds",
        "folded",
    ),
    (
        "similarity_summary",
        "Map similarity (Spearman; top-15% overlap) per comparison, overall, by cell and by cell "
        "move, 95% BCa CIs (descriptive)",
        "long",
    ),
)


def _stability(run_dir: Path, embed: bool = True, figures: _Figures | None = None) -> str:
    parts = []
    for name, what, how in STABILITY:
        t = read_table(run_dir / f"{name}.csv")
        if t is None:
            continue
        parts.append(
            _p(what) + "\n" + _frame_table(t)
            if how == "shown"
            else _folded(f"{what} ({len(t)} rows)", t, f"{name}.csv", embed or how == "folded")
        )
    if figures is not None and (figs := figures.take_kind("similarity")):
        parts += [f"<h3>{_e(FIGURE_KINDS['similarity'][0])}</h3>", _p(FIGURE_KINDS["similarity"][1]), figs]
    return _section("stability", "Stability", "\n".join(parts)) if parts else ""


def _baseline_substrate(run_dir: Path) -> str:
    """``baseline_substrate.csv`` (a run with explainer variants of different baselines), folded per model and stage."""
    table = read_table(run_dir / "baseline_substrate.csv")
    if table is None or not len(table):
        return ""
    parts = [_p(f"{baseline_substrate.EXPLANATION} Details in baseline_substrate.md.")]
    for (model, stage), sub in sorted(
        table.groupby(["model", "stage"], sort=False), key=lambda kv: (kv[0][0], stage_key(kv[0][1]))
    ):
        won = int(sub["verdict"].str.startswith(baseline_substrate.VERDICT_MATCH).sum())
        parts.append(
            f'<details class="table"><summary>{_e(model)} · {_e(stage)}: {won} of {len(sub)} rows win on '
            f"their own substrate</summary>\n{_p(str(sub['family'].iloc[0]))}\n"
            + _frame_table(sub, drop=["model", "stage", "family"])
            + "\n</details>"
        )
    return _section("baseline_substrate", TITLES["baseline_substrate"], "\n".join(parts))


# ----------------------------------------------------------------------------- figures


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk; None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _figure_names(*frames: pd.DataFrame | None) -> dict[str, str]:
    """File-name slug -> readable "model · stage" / "model · explainer" (plots.py names the files with ``slug``)."""
    names: dict[str, str] = {}
    for frame in frames:
        if frame is None:
            continue
        for model, group in frame.groupby("model", sort=True):
            names[slug(model)] = model
            for other in sorted(set(group["stage"]) | set(group["explainer"])):
                names[slug(model, other)] = f"{model} · {other}"
    return names


class _Figures:
    """The run's ``figures/*.png``, each placed on the page once: where it belongs (:meth:`take`), the rest last."""

    def __init__(self, run_dir: Path, names: Mapping[str, str], embed: bool) -> None:
        self.files = {f.stem: f for f in sorted((run_dir / "figures").glob("*.png"))}
        self.names, self.embed = names, embed
        self.placed: set[str] = set()

    def take(self, kind: str, *parts: str) -> str:
        """The figure ``<kind>_<slug(parts)>.png`` as HTML ("" when absent or already placed)."""
        stem = f"{kind}_{slug(*parts)}"
        if stem not in self.files or stem in self.placed:
            return ""
        self.placed.add(stem)
        return _figure_group([self._html(self.files[stem])])[0]

    def take_kind(self, kind: str) -> str:
        """Every figure ``<kind>_*.png`` not placed yet, as one group ("" when none)."""
        stems = [s for s in self.files if s.partition("_")[0] == kind and s not in self.placed]
        self.placed.update(stems)
        return _figure_group([self._html(self.files[s]) for s in stems])[0] if stems else ""

    def rest(self) -> str:
        """Every figure not placed yet, under a folded heading per kind, in file-name order."""
        groups: dict[str, list[str]] = {}
        for stem, f in self.files.items():
            if stem not in self.placed:
                kind = stem.partition("_")[0]
                groups.setdefault(kind if kind in FIGURE_KINDS else "other", []).append(self._html(f))
        parts = []
        for kind, figs in groups.items():
            heading, what = FIGURE_KINDS.get(kind, ("Other figures", ""))
            parts.append(
                f"<details><summary>{_e(heading)} ({len(figs)})</summary>\n"
                + (_p(what) if what else "")
                + "\n"
                + _figure_group(figs)[0]
                + "\n</details>"
            )
        return _section("figures", "Figures", "\n".join(parts)) if parts else ""

    def _html(self, f: Path) -> str:
        data = f.read_bytes()
        size = _png_size(data)
        if size is None:
            return _p(f"figures/{f.name} is not a PNG file; left out (`python -m bench report` redraws it).")
        kind, _, rest = f.stem.partition("_")
        known = kind in FIGURE_KINDS
        name = self.names.get(rest, rest) if known else f.stem
        alt = f"{FIGURE_KINDS[kind][0]}: {name}" if known else name
        uri = (
            "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            if self.embed
            else _href(f"figures/{f.name}")
        )
        return (
            f'<figure id="fig-{_e(f.stem)}" style="width:{size[0] + 14}px">'
            f'<img src="{uri}" width="{size[0]}" height="{size[1]}" alt="{_e(alt)}" data-file="{_e(f.name)}">'
            f'<figcaption>{_e(alt)} <span class="file">(figures/{_e(f.name)})</span></figcaption></figure>'
        )


def _figure_group(figures: list[str]) -> list[str]:
    return ['<div class="figs">\n' + "\n".join(figures) + "\n</div>"] if figures else []


# ----------------------------------------------------------------------------- page


# a line ending in a backslash continues on the next one (the stylesheet's text is unchanged)
CSS = """
:root{--ink:#1b1f24;--muted:#5c6670;--line:#d5dae0;--head:#f1f4f7;--blue:#0072B2;--sky:#e3f1fb;
--orange:#E69F00;--orangetint:#fbe8c0;--verm:#D55E00;--green:#009E73}
*{box-sizing:border-box}
body{margin:0;color:var(--ink);background:#fff;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",sans-serif}
header{background:#0b3c5d;color:#fff;padding:14px 20px}
header h1{margin:0;font-size:20px;font-weight:600}
header p.sub{margin:3px 0 0;color:#cfe8f7;font-size:13px}
header nav{margin-top:6px;font-size:13px}
header nav a{color:#cfe8f7;margin-right:14px;text-decoration:none}
header nav a:hover{text-decoration:underline}
main{max-width:1280px;margin:0 auto;padding:8px 20px 48px}
h2{font-size:18px;border-bottom:2px solid var(--blue);padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:22px 0 6px}
h4{font-size:14px;margin:14px 0 6px}
p.note{color:var(--muted);margin:6px 0;max-width:110ch}
p.banner{background:var(--orangetint);border-left:4px solid var(--orange);padding:8px 12px}
p.warn{background:var(--orangetint);padding:4px 8px;margin:4px 0;max-width:110ch}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12px;overflow-wrap:anywhere}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:8px 0}
dl.kv dt{font-weight:600;color:var(--muted)}
dl.kv dd{margin:0;min-width:0;overflow-wrap:anywhere}
.okbadge{color:#fff;background:var(--green);padding:0 6px;border-radius:3px}
.warnbadge{background:var(--orange);color:#000;padding:0 6px;border-radius:3px}
.scroll{overflow-x:auto;width:fit-content;max-width:100%;border:1px solid var(--line);\
border-radius:4px;margin:6px 0 12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap;vertical-align:top}
tbody tr:last-child td{border-bottom:0}
tbody tr:hover td{background:#f7f9fb}
th{background:var(--head);cursor:pointer;user-select:none;font-weight:600}
th:focus{outline:2px solid var(--blue);outline-offset:-2px}
th[aria-sort=ascending]::after{content:" \\25B2";color:var(--blue)}
th[aria-sort=descending]::after{content:" \\25BC";color:var(--blue)}
th .warn{background:var(--orangetint);padding:0 4px;border-radius:3px}
td.msg{white-space:normal;min-width:12em;max-width:40em;overflow-wrap:anywhere}
td.num{text-align:right}
td .ci{font-size:11px;color:var(--muted);font-weight:400}
td.r1,tbody tr:hover td.r1{background:var(--sky);font-weight:600}
td.err{color:var(--verm)}
td.na{color:var(--muted)}
td.name{font-weight:600}
details{margin:6px 0 12px}
summary{cursor:pointer;color:var(--blue)}
details.table{border:1px solid var(--line);border-radius:4px;padding:6px 10px;margin:6px 0}
details.table>summary{font-weight:600}
table[data-board],table[data-pooled]{font-size:13px}
table[data-board] td,table[data-board] th,table[data-pooled] td,table[data-pooled] th{padding:3px 6px}
table[data-board] th,table[data-pooled] th{white-space:normal;vertical-align:bottom}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;padding:6px;border:1px solid var(--line);border-radius:4px;max-width:100%;flex:0 1 auto}
figure img{display:block;width:100%;height:auto}
figcaption{color:var(--muted);margin-top:6px}
figcaption .file{font-size:12px}
"""

JS = """
(function () {
  "use strict";
  function key(td) {
    if (!td) { return [2, ""]; }
    var v = td.getAttribute("data-v");
    if (v !== null) { var x = parseFloat(v); return isNaN(x) ? [1, 0] : [0, x]; }
    return [0, td.textContent.trim()];
  }
  function sortBy(table, th, col) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.map.call(body.rows, function (r, i) { return [key(r.cells[col]), i, r]; });
    rows.sort(function (a, b) {
      if (a[0][0] !== b[0][0]) { return a[0][0] - b[0][0]; }  /* missing values last, either way */
      var x = a[0][1], y = b[0][1], c;
      if (typeof x === "number" && typeof y === "number") { c = x - y; }
      else { c = String(x).localeCompare(String(y), undefined, {numeric: true}); }
      return (asc ? c : -c) || a[1] - b[1];
    });
    rows.forEach(function (r) { body.appendChild(r[2]); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "click to sort";
      var go = function () { sortBy(table, th, col); };
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
      });
    });
  });
}());
"""

# nothing else loads: no fetch, no external image, style, script or font (inline ones and data: images only;
# a page that is not self-contained also loads its own figures/*.png from beside it)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
CSP_LINKED = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
TITLES = {
    "verdict": "Verdict",
    "details": "By model and stage",
    "prepost": "Pre vs post",
    "reliability": "Reliability card",
    "baseline_substrate": "Baseline vs substrate",
    "stability": "Stability",
    "figures": "Figures",
    "provenance": "Provenance",
}
DETAIL_KINDS = ("leaderboard", "cd", "reliability", "curves", "substrates")  # figures shown in a (model, stage) fold


def _read_pooled(run_dir: Path) -> pd.DataFrame | None:
    """``leaderboard_pooled.csv`` (a run with several training seeds) typed like the leaderboard; None without rows."""
    pooled = read_table(run_dir / "leaderboard_pooled.csv")
    if pooled is None or not len(pooled):
        return None
    for c in ("mean", "ci_low", "ci_high", "rank"):
        pooled[c] = pd.to_numeric(pooled[c].replace("", np.nan), errors="coerce")
    pooled["rank"] = pooled["rank"].astype("Int64")
    pooled["higher_is_better"] = pooled["higher_is_better"].map(_bool)
    return pooled


def _subtitle(run_dir: Path, manifest: Mapping[str, Any] | None, board: pd.DataFrame | None) -> str:
    """One line under the title: the run, its commit, its data and what it compared."""
    data = _get(manifest, "data")
    commit = _text(_get(_get(manifest, "git"), "commit"))[:10]
    bits = [
        f"commit {commit}" if manifest is not None else "no manifest.json",
        f"{_text(_get(data, 'dataset'))} {_text(_get(data, 'split'))} split, n = {_text(_get(data, 'n'))}"
        if manifest is not None
        else "",
    ]
    if board is not None:
        bits.append(
            f"{board['explainer'].nunique()} explainers × {board['metric'].nunique()} metrics × "
            f"{len(board[['model', 'stage']].drop_duplicates())} model stages"
        )
    status = _get(manifest, "status")
    if manifest is not None and status != "complete":
        bits.append(f"status {_text(status)}")
    return " · ".join(b for b in bits if b)


def render_html_report(run_dir: str | Path) -> str:
    """The text of ``report.html`` for the run folder ``run_dir`` (see the module docstring)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    board = _read_board(run_dir)
    card = _read_card(run_dir)
    pooled = _read_pooled(run_dir)
    name = _get(_get(manifest, "config"), "name") or run_dir.name
    embed = _self_contained(manifest)
    figures = _Figures(run_dir, _figure_names(board, pooled), embed)
    sections = {"verdict": _verdict(board, pooled, card, figures)}  # in this order: each figure goes where first asked
    sections["details"] = _details_by_table(
        board,
        card,
        read_table(run_dir / "comparisons.csv"),
        read_table(run_dir / "friedman.csv"),
        figures,
        pooled is not None,
    )
    sections.update(
        prepost=_prepost(run_dir, embed, figures),
        reliability=_reliability(card, embed),
        baseline_substrate=_baseline_substrate(run_dir),
        stability=_stability(run_dir, embed, figures),
        figures=figures.rest(),
        provenance=_provenance(run_dir, manifest),
    )
    nav = "".join(f'<a href="#{a}">{TITLES[a]}</a>' for a, s in sections.items() if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP if embed else CSP_LINKED}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>pneumobench · {_e(name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>pneumobench report · {_e(name)}</h1>"
        f'<p class="sub">{_e(_subtitle(run_dir, manifest, board))}</p><nav>{nav}</nav></header>\n<main>\n'
        + "\n".join(s for s in sections.values() if s)
        + f"\n</main>\n<script>{JS}</script>\n</body>\n</html>\n"
    )


def write_html_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the files already in the run folder; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"{run_dir} is not a folder; give the folder of a finished run (results/<run-name>)")
    return atomic_write_text(run_dir / REPORT, render_html_report(run_dir))
