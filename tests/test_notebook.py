"""examples/quickstart.ipynb runs top to bottom in a fresh kernel (nbclient), without a cell error."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(monkeypatch):
    # one intra-op thread in the kernel: two threads spin-wait on a busy 2-core machine (tests/conftest.py)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]  # execute() raises first; kept as the contract
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "max |output difference| after conversion" in text
    assert "scores.csv" in text and "leaderboard.md" in text  # the saved run directory
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure is shown
    assert any("text/markdown" in o.get("data", {}) for o in outputs)  # the leaderboard's Markdown
