"""HTML building blocks of the report: the page shell, tables, figures, number formats, and the
stylesheet and script shipped once in ``assets/`` (with plotly.js), so every page opens from file://."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

__all__ = ["Cell", "count", "esc", "figure_html", "fmt", "fmt_ci", "num", "page", "table_html", "write_assets"]

ASSETS = "assets"
PLOTLY_JS = "plotly.min.js"

CSS = """
body { font: 14px/1.45 Helvetica, Arial, sans-serif; margin: 0 2rem 3rem; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1rem; padding: .6rem 0; }
header nav a { margin-right: 1rem; }
h1 { font-size: 1.5rem; margin: .6rem 0; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .6rem 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; position: sticky; top: 0; }
th[data-sort] { cursor: pointer; user-select: none; }
th[data-sort]::after { content: " \\2195"; color: #aaa; }
th[aria-sort=ascending]::after { content: " \\2191"; color: #222; }
th[aria-sort=descending]::after { content: " \\2193"; color: #222; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.status-damaged td, tr.status-other-version td { background: #fdecea; }
tr.status-incomplete td { background: #fff6e0; }
.sig { color: #b00020; font-weight: bold; }
.warn { color: #8a5a00; } .problem { color: #b00020; }
.filters { display: flex; flex-wrap: wrap; gap: .8rem; align-items: end; margin: .6rem 0; }
.filters label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
.figure { margin: 1rem 0; min-height: 300px; }
.gen { white-space: pre-wrap; font-family: Menlo, Consolas, monospace; font-size: 12px; max-width: 38rem; }
.gen mark { background: #ffe08a; }
dl.prov { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dl.prov dt { font-weight: bold; } dl.prov dd { margin: 0; font-family: Menlo, Consolas, monospace; font-size: 12px; }
.muted { color: #777; } details { margin: .5rem 0; } .nowrap { white-space: nowrap; }
td.label { font-size: 12px; word-break: break-all; min-width: 12rem; }
td.notes { min-width: 11rem; font-size: 13px; }
#sweeps { font-size: 13px; } #sweeps td, #sweeps th { padding: .25rem .4rem; }
"""

#: Sorting of every ``table.sortable`` by a header click, and the index's filters.
JS = """
(function () {
  function cellKey(row, idx, numeric) {
    var c = row.cells[idx]; if (!c) return numeric ? NaN : '';
    var v = c.hasAttribute('data-value') ? c.getAttribute('data-value') : c.textContent.trim();
    return numeric ? (v === '' ? NaN : parseFloat(v)) : v.toLowerCase();
  }
  function sortBy(table, th) {
    var body = table.tBodies[0], idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute('data-sort') === 'number';
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    th.parentNode.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, idx, numeric), y = cellKey(b, idx, numeric);
      if (numeric) {
        if (isNaN(x) && isNaN(y)) return 0; if (isNaN(x)) return 1; if (isNaN(y)) return -1;
        return dir * (x - y);
      }
      return dir * (x < y ? -1 : x > y ? 1 : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.tHead.querySelectorAll('th[data-sort]').forEach(function (th) {
      th.addEventListener('click', function () { sortBy(table, th); });
    });
  });
  var index = document.getElementById('sweeps');
  if (!index) return;
  var filters = Array.prototype.slice.call(document.querySelectorAll('select[data-filter]'));
  var search = document.getElementById('search'), shown = document.getElementById('shown');
  function apply() {
    var q = search.value.trim().toLowerCase(), rows = index.tBodies[0].rows, n = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var ok = filters.every(function (f) {
        return !f.value || r.getAttribute('data-' + f.getAttribute('data-filter')) === f.value;
      });
      if (ok && q) ok = r.textContent.toLowerCase().indexOf(q) >= 0;
      r.hidden = !ok; if (ok) n++;
    }
    shown.textContent = n + ' of ' + rows.length + ' sweeps shown';
  }
  filters.forEach(function (f) { f.addEventListener('change', apply); });
  search.addEventListener('input', apply);
  apply();
})();
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x: Any, *, sign: bool = False, digits: int = 3) -> str:
    """A number for a table cell (``""`` for missing or NaN; ``digits=0``: a whole number)."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not _finite(x):
        return ""
    if digits == 0:
        return f"{round(float(x)):+d}" if sign else str(round(float(x)))
    return f"{float(x):+.{digits}f}" if sign else f"{float(x):.{digits}f}"


def fmt_ci(low: Any, high: Any) -> str:
    return f"[{fmt(low, sign=True)}, {fmt(high, sign=True)}]" if _finite(low) and _finite(high) else ""


@dataclass(frozen=True)
class Cell:
    """A table cell: its HTML (already escaped), an optional sort value and CSS class."""

    html: str
    value: Any = None
    cls: str = ""

    def render(self) -> str:
        attrs = f' class="{self.cls}"' if self.cls else ""
        if self.value is not None:
            attrs += f' data-value="{esc(self.value if _finite(self.value) or isinstance(self.value, str) else "")}"'
        return f"<td{attrs}>{self.html}</td>"


def num(x: Any, *, sign: bool = False, digits: int = 3) -> Cell:
    """A right-aligned number cell that sorts by its value."""
    return Cell(esc(fmt(x, sign=sign, digits=digits)), value=float(x) if _finite(x) else "", cls="num")


def count(x: Any) -> Cell:
    """A whole-number cell (layer, head, documents)."""
    return num(x, digits=0)


def table_html(
    headers: Sequence[tuple[str, str | None]],
    rows: Iterable[tuple[dict[str, str], Sequence[Cell | str]]],
    *,
    table_id: str | None = None,
    cls: str = "sortable",
) -> str:
    """A table; ``headers`` are (label, sort type: "number", "text" or None); each row is (tr attributes, cells)."""
    head = "".join(
        f'<th data-sort="{kind}">{esc(label)}</th>' if kind else f"<th>{esc(label)}</th>" for label, kind in headers
    )
    body = []
    for attrs, cells in rows:
        a = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
        body.append(
            f"<tr{a}>" + "".join(c.render() if isinstance(c, Cell) else f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f'<table{ident} class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def figure_html(fig: go.Figure, div_id: str) -> str:
    """The figure as a div drawn by the shipped plotly.js; ``data-traces`` says how many traces it holds."""
    inner = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True}
    )
    return f'<div class="figure" data-traces="{len(fig.data)}">{inner}</div>'


def page(title: str, body: str, *, root: str, nav: Sequence[tuple[str, str]] = (), figures: bool = False) -> str:
    """A whole page; ``root`` is the relative path from the page to the report's root ("." or "..")."""
    links = "".join(f'<a href="{esc(href)}">{esc(text)}</a>' for text, href in nav)
    plotly = f'<script src="{root}/{ASSETS}/{PLOTLY_JS}"></script>' if figures else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="{root}/{ASSETS}/report.css">{plotly}</head>'
        f"<body><header><nav>{links}</nav><h1>{esc(title)}</h1></header>{body}"
        f'<script src="{root}/{ASSETS}/report.js"></script></body></html>\n'
    )


def write_assets(out: Path) -> None:
    """plotly.js (the version plotly for Python ships), the stylesheet and the script, once, in ``out/assets``."""
    from plotly.offline import get_plotlyjs

    assets = out / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    (assets / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
    (assets / "report.css").write_text(CSS.lstrip(), encoding="utf-8")
    (assets / "report.js").write_text(JS.lstrip(), encoding="utf-8")
