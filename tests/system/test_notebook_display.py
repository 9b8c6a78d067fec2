"""What a notebook shows of a `Cluster`, a `TaskFuture` and a `TaskResult` (`_repr_html_`):
engines, queue and the dashboard link; status and value; every value escaped, so that one
whose repr holds markup shows as text. Rendered as Jupyter renders them, through IPython's
HTML formatter."""

from __future__ import annotations

import html
import logging

import pytest
from IPython.core.formatters import HTMLFormatter
from systest import block_until, wait_for_file

from taskmill import Cluster, StringTask

pytestmark = pytest.mark.timeout(120, method="thread")

as_html = HTMLFormatter()
EVIL = "<script>alert('x')</script>"


def evil_value():
    logging.warning("<b>logged</b>")
    return EVIL


def evil_failure():
    raise ValueError(EVIL)


def test_cluster_future_and_result_in_a_notebook(tmp_path):
    cluster = Cluster(1, heartbeat=0.5)
    assert "stopped" in as_html(cluster)
    with cluster, cluster.client() as tc:
        view = as_html(cluster)
        assert "running" in view and "1 alive (1 idle)" in view
        assert "0 scheduled, 0 pending, 0 succeeded, 0 failed" in view
        url = cluster.dashboard_url
        assert url and f'<a href="{html.escape(url)}"' in view

        # pending while the task runs; the queue shows it
        release, started = tmp_path / "release", tmp_path / "started"
        held = tc.submit(block_until, str(release), str(started))
        wait_for_file(str(started))
        assert "pending" in as_html(held) and "finished" not in as_html(held)
        assert "1 busy" in as_html(cluster)
        release.touch()
        assert held.result(timeout=60) == "released"
        assert "finished" in as_html(held) and "&#x27;released&#x27;" in as_html(held)

        ok = tc.submit(evil_value)
        assert ok.result(timeout=60) == EVIL
        view = as_html(ok)
        assert "finished" in view and "<script>" not in view and "<b>logged" not in view
        assert html.escape(repr(EVIL)) in view  # the value, as text
        assert "&lt;b&gt;logged&lt;/b&gt;" in view  # its stderr (the logged record), as text
        assert f"engine</th><td style=\"text-align:left\">{ok.metadata['engineid']}" in view

        bad = tc.submit(evil_failure)
        with pytest.raises(ValueError):
            bad.result(timeout=60)
        view = as_html(bad)
        assert "failed" in view and "ValueError" in view and "<script>" not in view

        tr = tc.run(StringTask("y = s; print(s)", push={"s": EVIL}, pull="y"), block=True)
        view = as_html(tr)
        assert "succeeded" in view and "<script>" not in view
        assert f"TaskResult {tr.taskid}" in view and html.escape(repr(EVIL)) in view
        assert html.escape(EVIL + "\n") in view  # stdout
        failed = tc.run(StringTask("raise KeyError(s)", push={"s": EVIL}), block=True)
        view = as_html(failed)
        assert "failed" in view and "KeyError" in view and "<script>" not in view
        assert "3 succeeded, 2 failed" in as_html(cluster)  # asked afresh each time
    assert "stopped" in as_html(cluster)


def test_a_jupyter_kernel_renders_them_as_html(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "from taskmill import Cluster\ncluster = Cluster(1, heartbeat=0.5).start()\ncluster",
        "f = cluster.client().submit(pow, 2, 10)\nf.result()\nf",
        "cluster.stop()\ncluster")]
    nbclient.NotebookClient(nb, timeout=90, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o["data"] for cell in nb.cells for o in cell.outputs
             if o.get("output_type") == "execute_result"]
    assert len(shown) == 3, [cell.outputs for cell in nb.cells]
    running, future, stopped = (d.get("text/html", "") for d in shown)
    assert "1 alive (1 idle)" in running and "open the dashboard" in running
    assert "finished" in future and "1024" in future
    assert "stopped" in stopped
