"""What the report tests share: one organisms campaign and its report (built once per session), and
headless Chromium driven by Selenium with the console and network logs on.

Without Chromium, chromedriver or Selenium the browser tests skip with one line naming the install
command; with ``DEPTHPROBE_REQUIRE_BROWSER=1`` (CI, ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMPAIGN = REPO / "campaigns" / "organisms.toml"
#: Documents per sweep of the test campaign (enough for paired intervals; small enough for seconds).
LIMIT = int(os.environ.get("DEPTHPROBE_REPORT_LIMIT", "6"))
INSTALL = "apt-get install chromium chromium-driver && pip install 'depthprobe[browser]'"
#: Network schemes a page that opens offline may touch.
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome", "devtools"}


@pytest.fixture(scope="session")
def organisms_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """campaigns/organisms.toml at a small limit, run through the command line with ``--report``.

    Returns the campaign's run root, the report's directory, its index and the command's stdout.
    """
    base = tmp_path_factory.mktemp("organisms_report")
    root, out = base / "runs", base / "report"
    # a process of its own, as a user runs it (and free of the test session's run-time type checks)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "depthprobe",
            "campaign",
            str(CAMPAIGN),
            "--root",
            str(root),
            "--limit",
            str(LIMIT),
            "--no-progress",
            "--report",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "out": out, "index": out / "index.html", "stdout": done.stdout}


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if chromium_binary() is None:
        return "no chromium binary"
    if shutil.which("chromedriver") is None:
        return "no chromedriver"
    return None


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (Selenium) that cannot reach any network: unresolvable hosts and a dead proxy,
    so a page that asked for a remote file would fail loudly as well as show in the network log."""
    missing = _missing_browser()
    if missing:
        message = f"headless Chromium not available ({missing}): {INSTALL}"
        if os.environ.get("DEPTHPROBE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium_binary())
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_messages(driver: Any) -> list[dict[str, Any]]:
    """The console entries since the last call (level, message, source)."""
    return list(driver.get_log("browser"))


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser requested since the last call (Chrome's performance log: CDP Network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message.get("method") == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def remote(urls: list[str]) -> list[str]:
    return [u for u in urls if urlparse(u).scheme not in LOCAL_SCHEMES]


def local_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


#: Rendered traces per figure container: plotly draws each scatter and bar trace as a g.trace in its
#: layer, each heatmap as a g.hm.
FIGURES_JS = """
return Array.from(document.querySelectorAll('.figure')).map(function (f) {
  return {expected: parseInt(f.getAttribute('data-traces'), 10),
          svg: f.querySelectorAll('svg.main-svg').length,
          traces: f.querySelectorAll('.scatterlayer > g.trace, .barlayer > g.trace, .heatmaplayer > g.hm').length,
          errorbars: f.querySelectorAll('g.errorbar path').length,
          title: (f.querySelector('.gtitle') || {textContent: ''}).textContent};
});
"""


def wait_for_figures(driver: Any, url: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Each figure container's state once the page at ``url`` is loaded with as many containers as its file
    holds and every one has drawn its SVG (or the timeout passed: the caller's assertions say what did not)."""
    from selenium.webdriver.support.ui import WebDriverWait

    declared = local_path(url).read_text(encoding="utf-8").count('<div class="figure"')

    def drawn(d: Any) -> tuple[list[dict[str, Any]]] | bool:  # a tuple: a page without figures is done too
        if d.execute_script("return document.readyState") != "complete" or d.current_url.split("#")[0] != url:
            return False
        figures = d.execute_script(FIGURES_JS)
        done = len(figures) == declared and all(f["svg"] > 0 and f["traces"] >= f["expected"] for f in figures)
        return (figures,) if done else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(drawn)[0]
    except Exception:
        return driver.execute_script(FIGURES_JS)


def screenshot(driver: Any, name: str, fallback_dir: Path, width: int = 1400) -> Path:
    """A PNG of the current page, as tall as the page up to 2400 pixels, into $DEPTHPROBE_SCREENSHOTS
    (docs/images when refreshing the docs), else ``fallback_dir``."""
    folder = Path(os.environ.get("DEPTHPROBE_SCREENSHOTS") or fallback_dir)
    folder.mkdir(parents=True, exist_ok=True)
    old = driver.get_window_size()
    driver.set_window_size(width, old["height"])
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height + 40, 600), 2400))
    path = folder / name
    assert driver.save_screenshot(str(path)), f"the screenshot {path} was not written"
    driver.set_window_size(old["width"], old["height"])
    return path


class _Tables(HTMLParser):
    """Tables of a page (rows: their attributes and cells' text and ``data-value``), links and script sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.ids: set[str] = set()
        self._row: dict[str, Any] | None = None
        self._cell: dict[str, Any] | None = None
        self._stack: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
            if self._cell is not None:
                self._cell["links"].append(a["href"])
        if tag in ("script", "link", "img", "iframe") and (a.get("src") or (tag == "link" and a.get("href"))):
            self.scripts.append(a.get("src") or a["href"])
        if tag == "table":
            self._stack.append({"id": a.get("id"), "class": a.get("class", ""), "header": [], "rows": []})
        elif tag == "tr" and self._stack:
            self._row = {"attrs": a, "cells": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": "", "value": a.get("data-value"), "links": [], "tag": tag}

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._row["cells"].append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None and self._stack:
            table = self._stack[-1]
            if self._row["cells"] and all(c["tag"] == "th" for c in self._row["cells"]):
                table["header"] = [c["text"] for c in self._row["cells"]]
            else:
                table["rows"].append(self._row)
            self._row = None
        elif tag == "table" and self._stack:
            self.tables.append(self._stack.pop())

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data


def parse_page(path: Path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def table(page: _Tables, table_id: str) -> list[dict[str, Any]]:
    """The rows of table ``table_id`` as {header: cell} dicts (plus ``_attrs`` and ``_cells``)."""
    (found,) = [t for t in page.tables if t["id"] == table_id]
    return [dict(zip(found["header"], row["cells"]), _attrs=row["attrs"], _cells=row["cells"]) for row in found["rows"]]
