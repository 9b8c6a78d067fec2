"""The notebook views (display.py) escape what they show and stay small."""

from __future__ import annotations

from IPython.core.formatters import HTMLFormatter

from taskmill import TaskResult

as_html = HTMLFormatter()


class Loud:
    def __repr__(self):
        return "<img src=x onerror=alert(1)>" + "x" * 10_000


class Broken:
    def __repr__(self):
        raise RuntimeError("no repr")


def result(**kw):
    base = dict(taskid=7, engineid=2, submitted="", completed="", duration=0.5)
    return TaskResult(**{**base, **kw})


def test_a_taskresult_shows_its_values_escaped_and_shortened():
    view = as_html(result(results={"a": Loud(), "b": Broken()}, failure=None,
                          stderr="<i>warned</i>\n"))
    assert "TaskResult 7" in view and "succeeded" in view and "500 ms" in view
    assert "<img" not in view and "&lt;img src=x" in view
    assert "more characters" in view and len(view) < 5_000
    assert "whose repr raised RuntimeError" in view
    assert "&lt;i&gt;warned&lt;/i&gt;" in view and "<i>" not in view


def test_a_failed_taskresult_shows_its_failure():
    view = as_html(result(results=None, failure=KeyError("<b>k</b>"), attempts=3))
    assert "failed" in view and "KeyError" in view and "<b>k" not in view
    assert "attempts" in view
