"""The study's views across sweeps, each drawn where the report holds the sweeps it needs (arXiv 2510.02091):

- the same questions under three protocols, layer curves side by side (the paper's Figures 1 and 2);
- closed- against open-book retrieval;
- a base model against its distilled model on reasoning;
- a layer x head heatmap of every head sweep of one model and task;
- the protocols compared in one table: which skipped layers change each metric distinguishably.

Sweeps are matched by task name (the study's tasks and the model organisms' stand-ins, as the
scripts in ``experiments/`` pair them) and must share model, shots, thinking and limit.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from depthprobe import plots
from depthprobe.report.html import Cell, count, esc, figure_html, fmt, num, page, table_html
from depthprobe.report.scan import Sweep
from depthprobe.uncertainty import significant

__all__ = ["View", "study_page", "study_views"]

#: The same questions under three protocols (experiments/protocols.py).
PROTOCOL_SETS = (
    {"log-likelihood (letters)": "mmlu", "continuation": "mmlu_continuation", "generation": "mmlu_generative"},
    {
        "log-likelihood (choices)": "organism_knowledge",
        "continuation": "organism_closedbook",
        "generation": "organism_closedbook_generative",
    },
)
#: Closed book, open book (experiments/retrieval.py).
BOOK_PAIRS = (("openbookqa", "openbookqa_open"), ("organism_closedbook", "organism_openbook"))
#: Base model, its distilled model (experiments/distilled.py), by the last part of the model name, any case.
DISTILLED_PAIRS = (("llama-3.1-8b", "deepseek-r1-distill-llama-8b"), ("organism-base", "organism-distilled"))
REASONING_TASKS = ("gsm8k_cot", "gsm8k", "organism_reasoning")


@dataclass
class View:
    """One study figure or table, the sweeps it was drawn from, and its anchor on the study page."""

    kind: str
    title: str
    sweeps: list[Sweep]
    figure: go.Figure | None = None
    table: str | None = None
    anchor: str = field(default="")


def _usable(s: Sweep) -> bool:
    return s.results is not None and s.metric is not None and s.baseline is not None


def _layer_sweeps(sweeps: Sequence[Sweep]) -> list[Sweep]:
    return [s for s in sweeps if _usable(s) and s.grid == "layers"]


def _by_setting(sweeps: Sequence[Sweep]) -> dict[tuple, dict[str, Sweep]]:
    """(model, thinking, limit) -> task -> its layer sweep (the lowest shot count when there are several)."""
    out: dict[tuple, dict[str, Sweep]] = defaultdict(dict)
    for s in sorted(_layer_sweeps(sweeps), key=lambda s: s.shots or 0):
        out[(s.model, s.thinking, s.limit)].setdefault(s.task, s)
    return out


def _title(headline: str, sweeps: Sequence[Sweep]) -> str:
    about = plots.describe_run(
        model=[s.model for s in sweeps],
        task=[s.task for s in sweeps],
        protocol=[str(s.manifest.get("protocol")) for s in sweeps],
        n=min((s.n_documents for s in sweeps if s.n_documents is not None), default=None),
        limit=sweeps[0].limit,
    )
    return plots.titled(headline, about)


def _protocol_views(sweeps: Sequence[Sweep]) -> list[View]:
    views = []
    for (model, _, _), tasks in _by_setting(sweeps).items():
        for labels in PROTOCOL_SETS:
            if all(t in tasks for t in labels.values()):
                chosen = [tasks[t] for t in labels.values()]
                fig = plots.layer_panels(
                    {label: tasks[t].results for label, t in labels.items()},
                    {label: str(tasks[t].metric) for label, t in labels.items()},
                    title=_title(f"{model}: the same questions under three protocols", chosen),
                )
                views.append(View("protocols", f"{model}: three protocols", chosen, fig))
    return views


def _book_views(sweeps: Sequence[Sweep]) -> list[View]:
    views = []
    for (model, _, _), tasks in _by_setting(sweeps).items():
        for closed, opened in BOOK_PAIRS:
            if closed in tasks and opened in tasks:
                pair = [tasks[closed], tasks[opened]]
                frames = {"closed book": pair[0].results, "open book": pair[1].results}
                title = _title(f"{model}: closed vs open book", pair)
                if pair[0].metric == pair[1].metric:
                    fig = plots.layer_curves(frames, [str(pair[0].metric)], title=title)
                else:
                    fig = plots.layer_panels(
                        frames, {"closed book": str(pair[0].metric), "open book": str(pair[1].metric)}, title=title
                    )
                views.append(View("books", f"{model}: closed vs open book", pair, fig))
    return views


def _distilled_views(sweeps: Sequence[Sweep]) -> list[View]:
    groups: dict[tuple, dict[str, Sweep]] = defaultdict(dict)
    for s in _layer_sweeps(sweeps):
        if s.task in REASONING_TASKS:
            groups[(s.task, s.shots, s.limit)].setdefault(s.model_short.lower(), s)
    views = []
    for (task, shots, _), models in sorted(groups.items(), key=lambda kv: str(kv[0])):
        for base, distilled in DISTILLED_PAIRS:
            if base in models and distilled in models and models[base].metric == models[distilled].metric:
                pair = [models[base], models[distilled]]
                shot = "" if shots is None else f", {shots}-shot"
                fig = plots.layer_curves(
                    {p.model_short: p.results for p in pair},
                    [str(pair[0].metric)],
                    title=_title(f"base vs distilled: {task}{shot}", pair),
                )
                views.append(View("distilled", f"base vs distilled: {task}{shot}", pair, fig))
    return views


def _heatmap_views(sweeps: Sequence[Sweep]) -> list[View]:
    groups: dict[tuple, list[Sweep]] = defaultdict(list)
    for s in sweeps:
        if _usable(s) and re.match(r"^heads:", s.grid):
            groups[(s.model, s.task, s.shots, s.thinking, s.limit, s.metric)].append(s)
    views = []
    for (model, task, shots, _, _, metric), members in groups.items():
        heads = pd.concat([s.results[s.results["kind"] == "head"] for s in members], ignore_index=True)
        shot = "" if shots is None else f", {shots}-shot"
        layers = sorted({int(v) for v in heads["layer"].dropna()})
        fig = plots.head_heatmap(
            heads,
            metric=str(metric),
            title=_title(
                f"{model}: {task}{shot}, delta {metric} per head (layers {', '.join(map(str, layers))})", members
            ),
        )
        views.append(View("heatmap", f"{model}: {task}{shot}, layer x head", members, fig))
    return views


def _protocol_table(sweeps: Sequence[Sweep]) -> list[View]:
    layer_sweeps = sorted(_layer_sweeps(sweeps), key=lambda s: (s.model, s.protocol, s.task, s.shots or 0))
    usable = [s for s in layer_sweeps if s.has_intervals]
    if not usable:
        return []
    n_layers = max(int(s.results["layer"].max()) + 1 for s in usable)  # type: ignore[index]
    headers = [
        ("model", "text"),
        ("task", "text"),
        ("protocol", "text"),
        ("shots", "number"),
        ("metric", "text"),
        ("baseline", "number"),
        ("distinguishable layers", "number"),
    ]
    headers += [(f"L{layer}", "number") for layer in range(n_layers)]
    rows = []
    for s in usable:
        df, m = s.results, str(s.metric)
        skips = df[(df["kind"] == "skip") & (df["n_interventions"] == 1)]  # type: ignore[index]
        sig = significant(skips, m)
        marked = [int(v) for v in skips.loc[sig, "layer"]]
        cells: list[Cell | str] = [
            esc(s.model),
            f'<a href="{esc(s.page)}">{esc(s.task)}</a>',
            esc(s.protocol),
            count(s.shots),
            esc(m),
            num(s.baseline),
            Cell(esc(", ".join(f"L{v}" for v in marked) or "none"), value=len(marked)),
        ]
        by_layer = {int(r["layer"]): (r[f"delta_{m}"], bool(sig.loc[i])) for i, r in skips.iterrows()}
        for layer in range(n_layers):
            delta, mark = by_layer.get(layer, (None, False))
            text = esc(fmt(delta, sign=True, digits=2)) + ('<span class="sig">*</span>' if mark else "")
            cells.append(Cell(text, value=float(delta) if delta is not None else "", cls="num"))
        rows.append(({}, cells))
    table = table_html(headers, rows, table_id="protocol-table")
    return [
        View(
            "table",
            "protocols compared: layers whose skip changes the metric distinguishably",
            usable,
            table=table + '<p class="muted">Each cell is the delta of the metric when that layer is skipped; '
            "* marks a paired 95% interval that excludes 0.</p>",
        )
    ]


def study_views(sweeps: Sequence[Sweep]) -> list[View]:
    """Every view the sweeps allow, each with a unique anchor."""
    views = (
        _protocol_views(sweeps)
        + _book_views(sweeps)
        + _distilled_views(sweeps)
        + _heatmap_views(sweeps)
        + _protocol_table(sweeps)
    )
    for i, v in enumerate(views):
        v.anchor = f"{v.kind}-{i}"
    return views


SECTIONS = {
    "protocols": "The same questions under three protocols",
    "books": "Closed- against open-book retrieval",
    "distilled": "Base against distilled model on reasoning",
    "heatmap": "Layer x head heatmaps",
    "table": "Protocols compared",
}


def study_page(views: Sequence[View]) -> str:
    """The study page: a table of contents, then each view with links to the sweeps it draws on."""
    toc, body = [], []
    for kind, heading in SECTIONS.items():
        members = [v for v in views if v.kind == kind]
        if not members:
            continue
        toc.append(
            f"<li>{esc(heading)}: " + ", ".join(f'<a href="#{v.anchor}">{esc(v.title)}</a>' for v in members) + "</li>"
        )
        body.append(f"<h2>{esc(heading)}</h2>")
        for v in members:
            sources = ", ".join(f'<a href="{esc(s.page)}">{esc(s.label)}</a>' for s in v.sweeps)
            content = figure_html(v.figure, f"fig-{v.anchor}") if v.figure is not None else (v.table or "")
            body.append(
                f'<section id="{v.anchor}"><h3>{esc(v.title)}</h3>{content}'
                f'<p class="muted">From: {sources}</p></section>'
            )
    intro = (
        "<p>Comparisons across sweeps, drawn where the report holds every sweep a view needs "
        "(same model, shots, thinking and limit). Error bars are the paired 95% intervals of each delta.</p>"
    )
    return page(
        "depthprobe report: study views",
        intro + f"<ul>{''.join(toc)}</ul>" + "".join(body),
        root=".",
        nav=[("index", "index.html"), ("study views", "study.html")],
        figures=True,
    )


def views_of(views: Sequence[View], sweep: Sweep) -> list[tuple[str, str]]:
    """(title, anchor) of every view that draws on ``sweep``."""
    return [(v.title, v.anchor) for v in views if any(s is sweep for s in v.sweeps)]
