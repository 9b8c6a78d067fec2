"""The notebook example runs in a real Jupyter kernel and renders its progress bar as a widget."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(180, method="thread")
NOTEBOOK = Path(__file__).parents[2] / "examples" / "progress_in_a_notebook.ipynb"


def test_notebook_example_renders_a_progress_bar(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert widgets, f"no progress-bar widget among the outputs: {outputs}"
    results = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result"]
    assert results == ["2", str(sum(x * x for x in range(200)))]
    assert not [o for o in outputs if o.get("output_type") == "error"]
