"""A study report a browser opens: every sweep under some roots, its figure with error bars, and the
study's side-by-side views, as a static site that works offline from ``file://``.

``depthprobe.report(roots, out)`` (or ``python -m depthprobe report ROOT... -o DIR``, or
``campaign ... --report DIR``) writes::

    DIR/index.html              one row per run directory: filter and sort by model, task, protocol,
                                grid and shots; documents, baseline, the largest deltas distinguishable
                                at 95%, warnings; a damaged, unfinished or foreign run shows what is wrong
    DIR/sweeps/<run>.html       the grid's figure, every condition's metric, delta, stderr, 95% interval
                                and mark; divergence and example generations (generation sweeps); provenance
    DIR/study.html              the study views the sweeps allow (three protocols, closed vs open book,
                                base vs distilled, layer x head heatmaps, protocols compared)
    DIR/assets/                 plotly.js (shipped once, never fetched), the stylesheet and the script
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path

from depthprobe.report.html import write_assets
from depthprobe.report.pages import index_page, sweep_page, write
from depthprobe.report.scan import Sweep, scan
from depthprobe.report.study import study_page, study_views, views_of

__all__ = ["Sweep", "report", "scan"]


def report(roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write the report of every run directory under ``roots`` into ``out``; returns ``out/index.html``.

    A run directory that cannot be read is listed in the index with what is wrong and never stops
    the report; a root without any run directory is a one-line ``ValueError``. ``out``'s earlier
    pages are replaced (other files in it are left alone).
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    sweeps = scan(roots)
    out = Path(out)
    if (out / "manifest.json").exists() or (out / "conditions").is_dir():
        raise ValueError(f"output directory {str(out)!r} is a run directory; write the report elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    write_assets(out)
    views = study_views(sweeps)
    pages = {s.page for s in sweeps if s.page is not None}
    for old in (out / "sweeps").glob("*.html"):  # pages of run directories that are gone must not linger
        if f"sweeps/{old.name}" not in pages:
            old.unlink()
    for s in sweeps:
        if s.page is not None:
            write(out / s.page, sweep_page(s, in_study=views_of(views, s)))
    if views:
        write(out / "study.html", study_page(views))
    elif (out / "study.html").exists():
        (out / "study.html").unlink()
    index = out / "index.html"
    write(index, index_page(sweeps, [str(r) for r in roots], study=bool(views)))
    return index


class _CallableModule(types.ModuleType):
    """``depthprobe.report`` is this package once any of it is imported; calling it calls :func:`report`."""

    def __call__(
        self, roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
    ) -> Path:
        return report(roots, out)


sys.modules[__name__].__class__ = _CallableModule
