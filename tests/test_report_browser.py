"""The report of campaigns/organisms.toml in real headless Chromium (Selenium), as a reader opens it from file://.

Every page reachable from the index is loaded and checked: no console message of level error, every
figure container drew its SVG with as many traces as its figure holds (and as the grid implies:
2 per series of a layer sweep, 2 per GQA group of a layer's heads, 1 per heatmap), error bars drawn,
every link resolves, and the browser requested nothing but local files (Chrome's performance log
lists every CDP ``Network.requestWillBeSent``; the browser also has no resolvable host and a dead
proxy). The index's sort and filters change which rows are visible and in which order.

Screenshots of the index and one sweep page go to $DEPTHPROBE_SCREENSHOTS when set (the committed
ones: ``DEPTHPROBE_SCREENSHOTS=docs/images pytest tests/test_report_browser.py``).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from urllib.parse import urlparse

import pytest

from depthprobe.results import load_results

pytest.register_assert_rewrite("tests.report_support")  # a plugin of this module (below), imported first
from tests.report_support import (  # noqa: E402
    console_messages,
    local_path,
    remote,
    requested_urls,
    screenshot,
    wait_for_figures,
)

#: The session fixtures ``browser`` (headless Chromium) and ``organisms_report`` (the campaign and its report),
#: shared with tests/test_report.py: built once per test session.
pytest_plugins = ["tests.report_support"]

SWEEP_SHOT = "organism-distilled__organism_reasoning_0shot__heads_3.html"  # the docs' screenshot


def expected_traces(run_dir: Path, grid: str) -> int:
    """Traces of a sweep's figure from its grid and results: a layer sweep draws (a) metric and (b) delta,
    one trace each; a layer's heads or groups draw (a) and (b) per GQA group (organisms: 8 heads, 2 groups)."""
    if grid == "layers":
        return 2
    df = load_results(run_dir)
    units = df.loc[df["condition"] != "baseline", "index"].astype(int)
    groups = {int(i) // 4 for i in units} if grid.startswith("heads:") else set(units)
    return 2 * len(groups)


def test_every_page_renders_offline(browser, organisms_report: dict, tmp_path: Path) -> None:
    out = organisms_report["out"]
    start = out.resolve().as_uri() + "/index.html"
    queue, seen = deque([start]), {start}
    console_messages(browser), requested_urls(browser)  # start both logs empty
    grids = {}
    anchors: dict[str, set[str]] = {}  # page -> the ids links point to in it
    checked_figures = 0
    while queue:
        url = queue.popleft()
        browser.get(url)
        figures = wait_for_figures(browser, url)
        page = local_path(url)
        for f in figures:
            assert f["svg"] >= 1, (url, f)
            assert f["traces"] == f["expected"], (url, f)
            assert "n=" in f["title"] and "limit" in f["title"], (url, f["title"])  # model, task, protocol, n, limit
            checked_figures += 1
        if page.parent.name == "sweeps":  # the grid's figure; a generation sweep's divergence figure too
            label = browser.find_element("css selector", "h1").text
            grid, protocol = grids[label]
            assert len(figures) == (2 if protocol == "generation" else 1), url
            for f in figures:  # both draw (a) and (b) per series or GQA group
                assert f["expected"] == expected_traces(organisms_report["root"] / label, grid), url
                assert f["errorbars"] > 0, url  # six documents give paired intervals
        if page.name == "index.html":
            for row in browser.find_elements("css selector", "#sweeps tbody tr"):
                label = row.find_element("css selector", "td:last-child").get_attribute("textContent").strip()
                grids[label] = (row.get_attribute("data-grid"), row.get_attribute("data-protocol"))
        hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        for href in hrefs:
            parsed = urlparse(href)
            assert parsed.scheme == "file", (url, href)
            target = local_path(href)
            assert target.is_file(), (url, href)
            if parsed.fragment:
                anchors.setdefault(href.split("#")[0], set()).add(parsed.fragment)
            link = href.split("#")[0]
            if link not in seen:
                seen.add(link)
                queue.append(link)
        errors = [m for m in console_messages(browser) if m["level"] in ("SEVERE", "ERROR")]
        assert not errors, (url, errors)
        assert not remote(requested_urls(browser)), url
        if page.name == SWEEP_SHOT:
            assert screenshot(browser, "report_sweep.png", tmp_path).stat().st_size > 10_000
    assert len(seen) == 24 + 2  # index, study views, every sweep page
    assert anchors  # the sweep pages link to their study views, the study page's contents to its sections
    for page_url, ids in anchors.items():
        browser.get(page_url)
        wait_for_figures(browser, page_url)  # the whole document is parsed and drawn before its ids are looked up
        missing = browser.execute_script("return arguments[0].filter(i => !document.getElementById(i))", sorted(ids))
        in_file = [i for i in missing if f'id="{i}"' in local_path(page_url).read_text(encoding="utf-8")]
        assert not missing, (page_url, missing, "of these, in the file but not the DOM:", in_file)
    assert checked_figures == 24 + 10 + 14  # one per sweep page, 10 divergence figures, the study's 14


def _visible(browser) -> list:
    return [r for r in browser.find_elements("css selector", "#sweeps tbody tr") if r.is_displayed()]


def test_index_sorts_and_filters(browser, organisms_report: dict, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(organisms_report["index"].resolve().as_uri())
    assert len(_visible(browser)) == 24
    assert browser.find_element("id", "shown").text == "24 of 24 sweeps shown"
    assert screenshot(browser, "report_index.png", tmp_path, width=1600).stat().st_size > 10_000

    Select(browser.find_element("css selector", "select[data-filter=model]")).select_by_value("organism-distilled")
    rows = _visible(browser)
    assert len(rows) == 12 and {r.get_attribute("data-model") for r in rows} == {"organism-distilled"}
    Select(browser.find_element("css selector", "select[data-filter=protocol]")).select_by_value("generation")
    rows = _visible(browser)
    assert len(rows) == 5  # closed-book generation, reasoning at 0 and 1 shots x (layers, heads:3)
    assert {r.get_attribute("data-protocol") for r in rows} == {"generation"}
    Select(browser.find_element("css selector", "select[data-filter=grid]")).select_by_value("heads:3")
    Select(browser.find_element("css selector", "select[data-filter=shots]")).select_by_value("1")
    (row,) = _visible(browser)
    assert row.get_attribute("data-task") == "organism_reasoning"
    for name in ("model", "protocol", "grid", "shots"):
        Select(browser.find_element("css selector", f"select[data-filter={name}]")).select_by_value("")
    search = browser.find_element("id", "search")
    search.send_keys("retrieval")
    assert len(_visible(browser)) == 6 and browser.find_element("id", "shown").text == "6 of 24 sweeps shown"
    search.clear()
    search.send_keys(" ")  # an input event with an empty query shows every row again
    assert len(_visible(browser)) == 24

    def column(name: str) -> list[str]:
        headers = [h.text.split("\n")[0].strip() for h in browser.find_elements("css selector", "#sweeps thead th")]
        i = headers.index(name)
        return [r.find_elements("css selector", "td")[i].text for r in _visible(browser)]

    before = column("baseline")
    header = [h for h in browser.find_elements("css selector", "#sweeps thead th") if h.text.startswith("baseline")][0]
    header.click()
    ascending = column("baseline")
    assert [float(v) for v in ascending] == sorted(float(v) for v in before)
    assert ascending != before  # the campaign's order is by directory, not by baseline
    header.click()
    assert [float(v) for v in column("baseline")] == sorted((float(v) for v in before), reverse=True)
    task_header = [h for h in browser.find_elements("css selector", "#sweeps thead th") if h.text.startswith("task")][0]
    task_header.click()
    assert column("task") == sorted(column("task"))
    errors = [m for m in console_messages(browser) if m["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert not remote(requested_urls(browser))


@pytest.mark.parametrize("page", ["index.html", "study.html"])
def test_pages_load_without_network_even_when_asked_twice(browser, organisms_report: dict, page: str) -> None:
    """Reloading (cache or not) fetches only file:// URLs: plotly.js, the stylesheet and the script beside the pages."""
    url = (organisms_report["out"] / page).resolve().as_uri()
    requested_urls(browser)
    for _ in range(2):
        browser.get(url)
        wait_for_figures(browser, url)
    urls = requested_urls(browser)
    assert urls and not remote(urls)
    assets = {Path(urlparse(u).path).name for u in urls}
    assert {"report.css", "report.js"} <= assets
    assert ("plotly.min.js" in assets) == (page == "study.html")
