"""report.html: a tiny end-to-end run, its page checked by structure, rebuilt byte for byte, escaped,
and opened in a real headless browser (Debian's chromium driven by playwright)."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.report.html import write_html_report
from bench.run import runner
from bench.run.config import load_config
from explainers import EXPLAINERS, register_explainer

HOSTILE = '<script>alert("pwned")</script> & <img src=x onerror=alert(1)>'
EXPLAINERS_HTML = ["random", "edge", "captum.saliency", "test.hostile"]
METRICS_HTML = ["deletion_auc", "insertion_auc"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny finished run (the failing explainer's message is hostile HTML)."""

    @register_explainer("test.hostile", library="test")
    def hostile(model, inputs, targets, *, background):
        """Always raises with a message full of markup."""
        raise RuntimeError(HOSTILE)

    tmp = tmp_path_factory.mktemp("html")
    try:
        yield runner.run(load_config(None, _overrides(tmp / "results", tmp / "ck")), progress=False)
    finally:
        EXPLAINERS.unregister("test.hostile")


def _overrides(results: Path, checkpoints: Path) -> list[str]:
    return [
        f'results_dir="{results}"',
        f'checkpoint_dir="{checkpoints}"',
        'name="html"',
        'device="cpu"',
        'data.dataset="synthetic"',
        "data.options.n=64",
        "data.per_cell=2",
        "data.background_size=4",
        'models.names=["tiny"]',
        "train.epochs=2",
        "train.batch_size=32",
        "tune.epochs=1",
        'tune.unfreeze=["fc"]',
        f"explain.names={json.dumps(EXPLAINERS_HTML)}",
        f"metrics.names={json.dumps(METRICS_HTML)}",
        'metrics.params={"deletion_auc" = {steps = 6}, "insertion_auc" = {steps = 6}}',
        "reliability.substrates=[]",
        "reliability.imputation=false",
        "reliability.bootstrap=50",
    ]


@pytest.fixture(scope="module")
def linked_run(run_dir, tmp_path_factory):
    """The same run, re-run on a copy with ``report.self_contained = false``: a page setting is not
    another run, so every unit comes from the cache and only the page's layout changes."""
    tmp = tmp_path_factory.mktemp("linked")
    shutil.copytree(run_dir.parent, tmp / "results")
    cfg = load_config(None, _overrides(tmp / "results", run_dir.parent.parent / "ck") + ["report.self_contained=false"])
    return runner.run(cfg, progress=False)


class _Page(HTMLParser):
    """Leaderboard cells, images, every src/href, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.board: tuple[str, str] | None = None
        self.explainer: str | None = None
        self.metric: str | None = None
        self.cells: dict[tuple[str, str, str, str], str] = {}
        self.imgs: list[dict[str, str]] = []
        self.refs: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "table":
            self.board = (a["data-model"], a["data-stage"]) if "data-board" in a else None
        elif tag == "tr" and self.board:
            self.explainer = a.get("data-explainer")
        elif tag == "td" and self.board and "data-metric" in a:
            self.metric = a["data-metric"]
            self.cells[(*self.board, self.explainer, self.metric)] = ""
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self.metric = None
        elif tag == "table":
            self.board = None

    def handle_data(self, data):
        self.text.append(data)
        if self.board and self.metric:
            key = (*self.board, self.explainer, self.metric)
            self.cells[key] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_every_row_figure_and_provenance_is_in_the_page(run_dir):
    page = _parse(run_dir / "report.html")
    board = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False)
    assert len(board) == 2 * len(EXPLAINERS_HTML) * len(METRICS_HTML)
    for r in board.itertuples(index=False):
        cell = page.cells[(r.model, r.stage, r.explainer, r.metric)]
        if r.status == "ok":
            assert cell.startswith(f"{float(r.mean):.4g}") and f"({r.rank} {r.letters})" in cell, (r, cell)
        else:
            assert cell == ("n/a" if r.status == "n/a" else "error"), (r, cell)
    assert len(page.cells) == len(board)
    # every figure, embedded, each once
    pngs = sorted((run_dir / "figures").glob("*.png"))
    assert len(pngs) >= 4
    assert sorted(i["data-file"] for i in page.imgs) == [p.name for p in pngs]
    import base64

    for img in page.imgs:
        png = run_dir / "figures" / img["data-file"]
        assert img["src"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    # nothing outside the page: only data: images and in-page anchors
    assert page.refs and all(r.startswith(("data:image/png;base64,", "#")) for r in page.refs), page.refs
    assert "http://" not in "".join(page.refs) and "https://" not in "".join(page.refs)
    # provenance from the manifest
    manifest = json.loads((run_dir / "manifest.json").read_text())
    text = " ".join(page.text)
    for c in manifest["checkpoints"]:
        assert c["sha256"] in text
    data = manifest["data"]
    assert f"{data['dataset']} · test split · n = {data['n']}" in text and data.get("md5", "n/a") in text
    assert "has status" not in text  # no "run in progress" banner
    # the other tables
    for section in ("Pre vs post", "Reliability card", "Classifier: pre vs post"):
        assert section in text


def test_the_page_leads_with_the_verdict_in_reading_order(run_dir):
    """The first section is the verdict: each (model, stage) leaderboard with its rows in the reading order of
    the tested ranks, the metrics that pass the card first, and its critical-difference figure right after."""
    raw = (run_dir / "report.html").read_text(encoding="utf-8")
    main = raw[raw.index("<main>") :]
    assert (
        main.index('<section id="verdict">')
        < main.index('<section id="details">')
        < main.index('<section id="provenance">')
    )
    board = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False).replace({"rank": {"": None}})
    card = pd.read_csv(run_dir / "reliability.csv", keep_default_na=False)
    verdict = raw[raw.index('<section id="verdict">') : raw.index('<section id="details">')]
    for (model, stage), sub in board.groupby(["model", "stage"]):
        table = verdict[verdict.index(f'data-model="{model}" data-stage="{stage}"') :]
        table = table[: table.index("</table>")]
        shown = re.findall(r'data-explainer="([^"]+)"', table)
        fails = set(card[(card.model == model) & (card.stage == stage) & card.verdict.str.startswith("fails")].metric)
        # by hand: the mean rank over the metrics that pass the card, missing ranks left out, ties by name
        ranks = sub.assign(rank=pd.to_numeric(sub["rank"]))
        trusted = ranks[~ranks.metric.isin(fails)] if ranks[~ranks.metric.isin(fails)]["rank"].notna().any() else ranks
        mean = trusted.groupby("explainer")["rank"].mean().fillna(float("inf"))
        overall = ranks.groupby("explainer")["rank"].mean().fillna(float("inf"))
        assert shown == sorted(mean.index, key=lambda e: (mean[e], overall[e], e)), (model, stage, shown)
        assert shown != sorted(shown) or len(set(mean)) == 1  # not just alphabetical (else the check is vacuous)
        found = re.findall(r'<th scope="col"><span class="(warn|h)">(.+?) [↑↓]', table)
        heads = [(c, m.replace("<wbr>", "")) for c, m in found]
        assert [m for _, m in heads] == sorted(set(sub.metric) - fails) + sorted(set(sub.metric) & fails)
        assert {m for c, m in heads if c == "warn"} == fails
    assert 'data-file="cd_tiny_pre.png"' in verdict and 'data-file="cd_tiny_post.png"' in verdict
    # nothing but the verdict's tables carries the headline mark
    assert raw.count("data-headline") == verdict.count("data-headline") == board.groupby(["model", "stage"]).ngroups


def test_bench_report_rebuilds_the_page_byte_for_byte(run_dir):
    """The page `bench run` wrote (after its final manifest) is the page `bench report` rebuilds."""
    path = run_dir / "report.html"
    before = path.read_bytes()
    assert b"has not finished" not in before and b"wall time" in before
    path.unlink()
    assert main(["report", str(run_dir)]) == 0
    assert path.read_bytes() == before
    assert write_html_report(run_dir).read_bytes() == before


def test_a_page_that_is_not_self_contained_links_its_figures_and_long_tables(run_dir, linked_run):
    """report.self_contained = false: the same tables, figures linked by relative path, each folded detail
    table a link to its CSV beside the page, and nothing else referenced."""
    manifest = json.loads((linked_run / "manifest.json").read_text())
    units = manifest["units"]  # the same run, not recomputed (failed units are never cached: they are retried)
    assert units["from_cache"] + len(units["failed"]) == units["total"] and units["from_cache"] > 0
    assert manifest["config"]["report"] == {"self_contained": False, "maps": False}
    embedded, linked = _parse(run_dir / "report.html"), _parse(linked_run / "report.html")
    assert linked.cells == embedded.cells and len(linked.cells) > 0
    pngs = sorted(p.name for p in (linked_run / "figures").glob("*.png"))
    assert len(pngs) >= 4
    assert sorted((i["src"], i["data-file"]) for i in linked.imgs) == [(f"figures/{n}", n) for n in pngs]
    files = [r for r in linked.refs if not r.startswith("#")]
    assert all((linked_run / r).is_file() for r in files), files
    csvs = {r for r in files if r.endswith(".csv")}
    assert {"prepost_by_cell.csv", "reliability_controls.csv", "reliability_power.csv"} <= csvs
    path = linked_run / "report.html"
    before = path.read_bytes()
    embedded = (run_dir / "report.html").read_bytes()
    raw, embedded_raw = before.decode("utf-8"), embedded.decode("utf-8")
    folded = ("<details><summary>By cell of", "<details><summary>Control separation", "<details><summary>Power:")
    assert all(f in embedded_raw for f in folded)  # the long tables are links now, not folded rows
    assert not any(f in raw for f in folded)
    assert "img-src 'self';" in raw and "data:image/png" not in raw
    assert len(before) < len(embedded) / 2
    path.unlink()  # `bench report` reads the setting from the manifest: the same bytes
    assert main(["report", str(linked_run)]) == 0 and path.read_bytes() == before


def test_strings_from_files_are_escaped(run_dir):
    raw = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "test.hostile" in raw and HOSTILE not in raw
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in raw
    page = _parse(run_dir / "report.html")
    assert page.scripts == 1  # the sorter, nothing injected
    assert all(i.get("data-file") for i in page.imgs)  # no <img> but the figures
    assert HOSTILE in " ".join(page.text)  # shown as text


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")


PUBLISHED_ROOT = Path(__file__).resolve().parents[1] / "results" / "published"
# quick, card, ...: single runs (a `bench truth` folder is a set of runs with its own tables, not one run)
PUBLISHED_RUNS = sorted(
    p.parent.name for p in PUBLISHED_ROOT.glob("*/manifest.json") if json.loads(p.read_text()).get("kind") != "truth"
)


@pytest.mark.slow  # a real browser: ~5 s
def test_page_in_a_headless_browser(run_dir, tmp_path):
    _check_in_browser(run_dir, tmp_path, "tiny-run")


@pytest.mark.slow
def test_linked_page_in_a_headless_browser(linked_run, tmp_path):
    """Its figures load from beside it under the page's Content-Security-Policy (img-src 'self')."""
    _check_in_browser(linked_run, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED_RUNS)
def test_published_run_page_in_a_headless_browser(name, tmp_path):
    """The committed report.html of every published run (README, "A published run", "Which metrics
    can you trust here?")."""
    run = PUBLISHED_ROOT / name
    if not (run / "report.html").is_file():
        pytest.skip(f"{run / 'report.html'} not present")
    _check_in_browser(run, tmp_path, name)


@pytest.mark.slow
def test_the_overflow_check_catches_a_table_wider_than_the_page(tmp_path):
    """TABLES_FIT itself: a 3000 px table loose on the page fails it, the same table in a scrolling box passes."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    wide = '<table style="width:3000px"><thead><tr><th>wide</th></tr></thead><tbody><tr><td>x</td></tr></tbody></table>'
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT
        )
        try:
            page = browser.new_page()
            page.set_content(f"<body>{wide}</body>")
            assert page.evaluate(TABLES_FIT) == ["wide"]
            page.set_content(f'<body><div style="overflow-x:auto;max-width:100%">{wide}</div></body>')
            assert page.evaluate(TABLES_FIT) == []
            page.set_content(f'<body><div style="overflow-x:auto;width:2000px">{wide}</div></body>')  # box too wide
            assert page.evaluate(TABLES_FIT) == ["wide"]
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED_RUNS)
def test_published_run_is_rebuilt_byte_for_byte(name, tmp_path):
    """`bench report` on a copy of a committed run (without its cache) rewrites its tables, figures
    and page exactly as they are committed: the published files are what this code makes of the
    run's scores and manifest."""
    import shutil

    from bench.cli import main

    src, dst = PUBLISHED_ROOT / name, tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", ".lock"))
    committed = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    stamp = {p: (dst / p).stat().st_mtime_ns for p in committed}
    assert main(["report", str(dst)]) == 0
    rebuilt = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert sorted(rebuilt) == sorted(committed)
    assert [str(p) for p in committed if rebuilt[p] != committed[p]] == []
    rewritten = {p for p in committed if (dst / p).stat().st_mtime_ns != stamp[p]}
    assert {p for p in committed if p.suffix in (".md", ".html")} <= rewritten  # it did rebuild them


VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = "PNEUMOBENCH_SCREENSHOTS"  # a folder: the browser tests also save their screenshots there (docs/img)

# every table fits the page, or sits in a box that scrolls sideways and itself fits
TABLES_FIT = """() => {
  const width = document.documentElement.clientWidth, bad = [];
  for (const t of document.querySelectorAll('table')) {
    const r = t.getBoundingClientRect();
    if (r.left >= 0 && r.right <= width) { continue; }
    let box = t.parentElement;
    while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) { box = box.parentElement; }
    const b = box && box.getBoundingClientRect();
    if (!b || b.left < 0 || b.right > width) { bad.push(t.tHead ? t.tHead.textContent.slice(0, 80) : '?'); }
  }
  return bad;
}"""


def _check_in_browser(run_dir: Path, tmp_path: Path, shot_name: str | None = None) -> None:
    """The page at 1280 x 800 in headless chromium: the headline table in the first screen, no table wider than
    the page (each fits or scrolls inside its own box, every fold open), every figure loaded, sorting works,
    nothing loaded from outside, no script error."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    chromium = _chromium()
    board = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False)
    n_figures = len(list((run_dir / "figures").glob("*.png")))
    errors, outside = [], []
    first, full = tmp_path / "first.png", tmp_path / "full.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto((run_dir / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            # the answer first: the headline table starts within the first screen, before any other table
            top = page.evaluate("document.querySelector('table[data-headline]').getBoundingClientRect().top")
            assert 0 < top < VIEWPORT["height"] - 100, top
            assert page.evaluate("document.querySelector('table').hasAttribute('data-headline')")
            assert page.evaluate("document.querySelector('main > section').id") == "verdict"
            # the leaderboards render one row per explainer
            rows = page.evaluate("""() => Array.from(document.querySelectorAll('table[data-board]')).map(
                t => [t.dataset.model, t.dataset.stage, t.tBodies[0].rows.length])""")
            expected = board.groupby(["model", "stage"])["explainer"].nunique()
            assert sorted(map(tuple, rows)) == sorted((m, s, n) for (m, s), n in expected.items())
            assert page.evaluate("document.querySelectorAll('table').length") > len(rows)
            # a click on a metric's header sorts the table on the mean (missing values last), a second click reverses
            table = page.locator("table[data-headline]").first
            column = "Array.from(t.tBodies[0].rows).map(r => r.cells[1].getAttribute('data-v'))"
            table.locator("th").nth(1).click()
            up = table.evaluate(f"t => {column}")
            table.locator("th").nth(1).click()
            down = table.evaluate(f"t => {column}")
            values = [float(v) for v in up if v]
            assert len(values) >= 2 and values == sorted(values) and all(v for v in up[: len(values)])
            assert [float(v) for v in down if v] == sorted(values, reverse=True)
            assert table.locator("th").nth(1).get_attribute("aria-sort") == "descending"
            page.reload()
            page.wait_for_load_state("load")
            page.screenshot(path=str(first))
            page.screenshot(path=str(full), full_page=True)
            # every fold open: still no table wider than the page, every image loaded
            page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            assert page.evaluate(TABLES_FIT) == []
            assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]
            assert page.evaluate("document.images.length") == n_figures
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, outside
    for shot in (first, full):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(shot.read_bytes()[16:20], "big") == VIEWPORT["width"]
    if shot_name and os.environ.get(SCREENSHOTS):
        _save_small(first, Path(os.environ[SCREENSHOTS]) / f"report-{shot_name}-first-screen.png")
        _save_small(full, Path(os.environ[SCREENSHOTS]) / f"report-{shot_name}-full-page.png")


def _save_small(shot: Path, dst: Path, limit: int = 300_000) -> None:
    """A screenshot for the docs: a palette PNG (64 colours, else 32, else 16) under ``limit`` bytes; a page too
    tall for 16 colours is cut at the bottom."""
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    dst.parent.mkdir(parents=True, exist_ok=True)
    while True:
        for colours in (64, 32, 16):
            image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
            if dst.stat().st_size < limit:
                return
        if image.height < 400:
            return
        image = image.crop((0, 0, image.width, int(image.height * 0.8)))
