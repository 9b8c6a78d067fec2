"""A crawler that polls: tasks fetch pages, the script polls get_task_result(block=False).

A small web of linked pages is written to a folder first (the engines read them as files);
each task reads one page and returns the links it finds; the script keeps polling its
unfinished tasks without blocking, submitting a task for every page it has not seen, until
none is left, as the original examples polled the task controller.

    taskmill run -n 4 examples/classic/crawler.py
"""

import random
import tempfile
import time
from pathlib import Path

from taskmill import client


def make_site(root, pages=60, links=4, seed=1):
    """Pages 0..pages-1, each linking to a few others; all reachable from page 0."""
    rng = random.Random(seed)
    for i in range(pages):
        targets = {(i + 1) % pages, *(rng.randrange(pages) for _ in range(links - 1))}
        body = "".join(f'<a href="page{t}.html">page {t}</a>\n' for t in sorted(targets))
        (Path(root) / f"page{i}.html").write_text(f"<html><body>\n{body}</body></html>\n")
    return pages


def fetch(root, name):
    """Task code: read a page, return the pages it links to."""
    import re
    from pathlib import Path

    text = (Path(root) / name).read_text()
    return sorted(set(re.findall(r'href="([^"]+)"', text)))


root = tempfile.mkdtemp(prefix="taskmill-crawl-")
total = make_site(root)
tc = client.TaskClient()

seen = {"page0.html"}
running = {tc.run(client.MapTask(fetch, (root, "page0.html"))): "page0.html"}
polls = 0
while running:
    polls += 1
    for tid in list(running):
        links = tc.get_task_result(tid, block=False)  # None while it runs
        if links is None:
            continue
        del running[tid]
        for page in links:
            if page not in seen:
                seen.add(page)
                running[tc.run(client.MapTask(fetch, (root, page)))] = page
    time.sleep(0.01)
print(f"crawled {len(seen)} of {total} pages, polling {polls} times")
assert len(seen) == total
