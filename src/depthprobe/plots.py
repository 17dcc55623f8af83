"""The study's figures (plotly) from ``load_results`` DataFrames, and ``save_figure`` to HTML and PNG.

- :func:`layer_curves`: (a) a metric and (b) its delta vs baseline against the skipped layer,
  several metrics and/or runs (protocols) overlaid.
- :func:`head_attribution`: per-head metric and delta bars of one layer, coloured by GQA group.
- :func:`head_heatmap`: delta per (layer, head) when several layers were swept.
- :func:`o_proj_curves`: o_proj replacement schedules against the baseline.
- :func:`condition_bars`: the delta of every condition of any grid, one bar each.
- :func:`layer_panels`: layer curves side by side, one panel per run (the three protocols).

Every figure uses one style (:mod:`depthprobe.figure_style`: the template, error bars, colours by
GQA group) and takes a title that :func:`run_title` builds from the run: model, task, protocol,
documents and limit. :func:`save_figure` writes HTML and PNG.

Every function plots the DataFrame's values as they are (no smoothing or rescaling). Where the
results carry paired intervals (``delta_<metric>_ci_low/_ci_high``, see ``depthprobe.uncertainty``)
every point and bar has an error bar: the delta's 95% interval, drawn around the delta and,
shifted, around the metric itself (a bar that does not reach the baseline line marks a
difference distinguishable from zero). The heatmap shows the interval on hover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from depthprobe.figure_style import PALETTE as _PALETTE
from depthprobe.figure_style import TEMPLATE, Frames, describe_run, n_documents, run_title, save_figure, titled
from depthprobe.figure_style import as_frames as _as_frames
from depthprobe.figure_style import baseline_value as _baseline
from depthprobe.figure_style import error_bars as _error_y
from depthprobe.figure_style import gqa_groups as _groups
from depthprobe.figure_style import join_label as _label
from depthprobe.figure_style import require_columns as _require
from depthprobe.figure_style import single_conditions as _single
from depthprobe.figure_style import with_truncation_note as _title

__all__ = ["TEMPLATE", "condition_bars", "describe_run", "head_attribution", "head_heatmap", "layer_curves"]
__all__ += ["divergence", "layer_panels", "n_documents", "o_proj_curves", "run_title", "save_figure", "titled"]


def layer_curves(
    frames: Frames, metrics: Sequence[str] = ("acc",), *, kind: str = "skip", title: str | None = None
) -> go.Figure:
    """(a) ``metric`` and (b) ``delta_<metric>`` against the layer of each ``kind`` condition.

    ``frames`` is one ``load_results`` DataFrame or ``{label: DataFrame}`` (e.g. the three MMLU
    protocols); one line per (label, metric). The baseline is a dotted line in (a).
    """
    named = ", ".join(metrics)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=(f"(a) {named if len(named) <= 16 else 'score'}", "(b) delta vs baseline")
    )
    i = 0
    for label, df in _as_frames(frames).items():
        rows = _single(df, kind).sort_values("layer")
        for metric in metrics:
            _require(df, [metric, f"delta_{metric}"], f"results {label!r}".strip())
            color = _PALETTE[i % len(_PALETTE)]
            i += 1
            name = _label(label, metric)
            err = _error_y(rows, metric)
            for col, column in ((1, metric), (2, f"delta_{metric}")):  # (a) the metric, (b) its delta
                fig.add_trace(
                    go.Scatter(
                        x=rows["layer"].astype(int).tolist(),
                        y=rows[column].tolist(),
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=col == 1,
                        line=dict(color=color),
                        error_y=err,
                    ),
                    row=1,
                    col=col,
                )
            base = _baseline(df, metric)
            if base is not None:
                fig.add_hline(y=base, line=dict(color=color, dash="dot"), row=1, col=1)
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=1, col=2)
    fig.update_xaxes(title_text="skipped layer", dtick=1)
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_yaxes(title_text="delta", row=1, col=2)
    fig.update_layout(title=_title(title, frames), template=TEMPLATE)
    return fig


def head_attribution(
    df: pd.DataFrame,
    layer: int,
    *,
    metric: str = "acc",
    group_size: int = 1,
    kind: str = "head",
    title: str | None = None,
) -> go.Figure:
    """Per-head (a) ``metric`` and (b) delta bars for ``layer``, each head coloured by its GQA group.

    ``group_size`` is query heads per KV head (``model_dims(model).group_size``).
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    _require(df, [metric, f"delta_{metric}", "index"], "results")
    rows = _single(df, kind)
    rows = rows[rows["layer"] == layer].sort_values("index")
    if rows.empty:
        layers = sorted(int(v) for v in _single(df, kind)["layer"].dropna().unique())
        raise ValueError(f"no {kind} conditions for layer {layer}; layers swept: {layers}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"(a) {metric}", f"(b) delta {metric}"))
    heads = rows["index"].astype(int)
    for g in sorted(set(heads // group_size)):
        part = rows[(heads // group_size) == g]
        color = _PALETTE[g % len(_PALETTE)]
        x = part["index"].astype(int).tolist()
        err = _error_y(part, metric)
        for col, column in ((1, metric), (2, f"delta_{metric}")):  # (a) the metric, (b) its delta
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=part[column].tolist(),
                    name=f"group {g}",
                    legendgroup=f"g{g}",
                    marker_color=color,
                    showlegend=col == 1,
                    error_y=err,
                ),
                row=1,
                col=col,
            )
    base = _baseline(df, metric)
    if base is not None:
        fig.add_hline(y=base, line=dict(color="black", dash="dot"), row=1, col=1)
    fig.update_xaxes(title_text=f"head of layer {layer}", dtick=1)
    fig.update_layout(title=_title(title, df), template=TEMPLATE, barmode="group")
    return fig


def head_heatmap(
    df: pd.DataFrame, *, metric: str = "acc", kind: str = "head", delta: bool = True, title: str | None = None
) -> go.Figure:
    """A layer x head heatmap of ``delta_<metric>`` (or ``metric``) over every swept head."""
    column = f"delta_{metric}" if delta else metric
    _require(df, [column, "index"], "results")
    rows = _single(df, kind)
    if rows.empty:
        raise ValueError(f"no {kind} conditions in the results")
    table = (
        rows.assign(layer=rows["layer"].astype(int), index=rows["index"].astype(int))
        .pivot(index="layer", columns="index", values=column)
        .sort_index()
        .sort_index(axis=1)
    )
    hover = None
    if _error_y(rows, metric) is not None:
        placed = rows.assign(layer=rows["layer"].astype(int), index=rows["index"].astype(int))
        lo, hi = (
            placed.pivot(index="layer", columns="index", values=f"delta_{metric}_ci_{end}").reindex_like(table)
            for end in ("low", "high")
        )
        hover = [[f"95% CI [{a:+.3f}, {b:+.3f}]" for a, b in zip(ra, rb)] for ra, rb in zip(lo.values, hi.values)]
    fig = go.Figure(
        go.Heatmap(
            z=table.values.tolist(),
            x=table.columns.tolist(),
            y=table.index.tolist(),
            colorscale="RdBu",
            zmid=0 if delta else None,
            colorbar=dict(title=column),
            text=hover,
            hovertemplate=None if hover is None else "layer %{y} head %{x}: %{z:.3f} %{text}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer", dtick=1)
    fig.update_layout(title=_title(title, df), template=TEMPLATE)
    return fig


def _schedule_x(rows: pd.DataFrame) -> str:
    """The column that places a schedule's conditions: the layer that varies between them.

    Per-layer (x alone) and reverse (x..L-1) conditions differ in their first patched layer;
    accumulative ones (0..x) all start at layer 0 and differ in their last.
    """
    if rows["layer"].nunique() <= 1 and rows["layer_max"].nunique() > 1:
        return "layer_max"
    return "layer"


def o_proj_curves(frames: Mapping[str, pd.DataFrame], *, metric: str = "acc", title: str | None = None) -> go.Figure:
    """``metric`` of o_proj replacement schedules against the baseline.

    ``frames`` maps a schedule name to its results. The x value of a condition is the layer
    that varies across the schedule's conditions: the last patched layer for an accumulative
    schedule (layers 0..x patched), the first otherwise (per-layer: x alone; reverse: layers x..L-1).
    """
    fig = go.Figure()
    base = None
    xs: list[int] = []
    for i, (name, df) in enumerate(frames.items()):
        _require(df, [metric, "kind", "layer", "layer_max"], f"results {name!r}")
        rows = df[df["kind"] == "o_proj"]
        x_col = _schedule_x(rows)
        rows = rows.sort_values(x_col)
        x = rows[x_col].astype(int).tolist()
        xs += x
        fig.add_trace(
            go.Scatter(
                x=x,
                y=rows[metric].tolist(),
                mode="lines+markers",
                name=name,
                line=dict(color=_PALETTE[i % len(_PALETTE)]),
                error_y=_error_y(rows, metric),
            )
        )
        base = base if base is not None else _baseline(df, metric)
    if base is not None and xs:
        fig.add_trace(
            go.Scatter(
                x=[min(xs), max(xs)],
                y=[base, base],
                mode="lines",
                name="baseline",
                line=dict(color="black", dash="dot"),
            )
        )
    axis = "layer (per-layer: patched alone; reverse: first of k..L-1; accumulative: last of 0..k)"
    fig.update_xaxes(title_text=axis, tickmode="linear", dtick=1)
    fig.update_yaxes(title_text=metric)
    fig.update_layout(title=_title(title, frames), template=TEMPLATE)
    return fig


def condition_bars(
    df: pd.DataFrame, *, metric: str = "acc", group_size: int | None = None, title: str | None = None
) -> go.Figure:
    """``delta_<metric>`` of every condition but the baseline, one bar each in the results' order.

    With ``group_size`` (query heads per KV head) head and group conditions are coloured by their
    GQA group, one trace per group (other conditions form one more trace); without it, one trace.
    """
    _require(df, ["condition", f"delta_{metric}"], "results")
    rows = df[df["condition"] != "baseline"]
    if rows.empty:
        raise ValueError("no conditions besides the baseline in the results")
    fig = go.Figure()
    group = _groups(rows, group_size)
    order = list(rows["condition"])
    for g in sorted(group.unique()):
        part = rows[group == g]
        name = f"delta {metric}" if group_size is None else ("other" if g < 0 else f"group {g}")
        fig.add_trace(
            go.Bar(
                x=part["condition"].tolist(),
                y=part[f"delta_{metric}"].tolist(),
                name=name,
                marker_color="#7f7f7f" if g < 0 else _PALETTE[g % len(_PALETTE)],
                error_y=_error_y(part, metric),
            )
        )
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_xaxes(title_text="condition")
    fig.update_yaxes(title_text=f"delta {metric}")
    fig.update_layout(title=_title(title, df), template=TEMPLATE)
    return fig


def layer_panels(
    frames: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, str] | str,
    *,
    kind: str = "skip",
    title: str | None = None,
) -> go.Figure:
    """One panel per run, side by side: its ``metric`` against the skipped layer, with error bars and
    the baseline dotted (the same questions under several protocols, each with its own metric).

    ``metrics`` maps each label of ``frames`` to its metric (or one metric for all); one trace per panel.
    """
    frames = dict(frames)
    if not frames:
        raise ValueError("layer_panels needs at least one run")
    metric_of = {label: metrics if isinstance(metrics, str) else metrics[label] for label in frames}
    fig = make_subplots(
        rows=1,
        cols=len(frames),
        shared_yaxes=False,
        subplot_titles=[f"{label}: {metric_of[label]}" for label in frames],
    )
    for i, (label, df) in enumerate(frames.items()):
        metric = metric_of[label]
        _require(df, [metric], f"results {label!r}")
        rows = _single(df, kind).sort_values("layer")
        color = _PALETTE[i % len(_PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=rows["layer"].astype(int).tolist(),
                y=rows[metric].tolist(),
                mode="lines+markers",
                name=label,
                line=dict(color=color),
                error_y=_error_y(rows, metric),
            ),
            row=1,
            col=i + 1,
        )
        base = _baseline(df, metric)
        if base is not None:
            fig.add_hline(y=base, line=dict(color=color, dash="dot"), row=1, col=i + 1)
        fig.update_xaxes(title_text="skipped layer", dtick=1, row=1, col=i + 1)
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_layout(title=_title(title, frames), template=TEMPLATE, showlegend=False)
    return fig


def divergence(df: pd.DataFrame, *, group_size: int | None = None, title: str | None = None) -> go.Figure:
    """How much of the baseline's generation each condition keeps: (a) the share of documents whose generation
    is identical to the baseline's, (b) the mean index of the first generated token that differs.

    One bar per condition in the results' order (per layer for a layer sweep, per head for a head
    sweep); with ``group_size`` (query heads per KV head) head and group conditions are coloured by
    their GQA group. Error bars: the paired 95% interval of each delta from the baseline (whose
    share is 1 and whose ``diverge_at`` is its own length, dotted in (b)). Finer than exact match:
    a condition can change every generation without changing a single answer.
    """
    _require(df, ["condition", "identical_to_baseline", "diverge_at"], "results of a generation sweep")
    rows = df[df["condition"] != "baseline"]
    if rows.empty:
        raise ValueError("no conditions besides the baseline in the results")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("(a) generations identical to the baseline's", "(b) first differing token (mean index)"),
    )
    group = _groups(rows, group_size)
    order = list(rows["condition"])
    for g in sorted(group.unique()):
        part = rows[group == g]
        name = "conditions" if group_size is None else ("other" if g < 0 else f"group {g}")
        color = "#7f7f7f" if g < 0 else _PALETTE[g % len(_PALETTE)]
        for col, metric in ((1, "identical_to_baseline"), (2, "diverge_at")):
            fig.add_trace(
                go.Bar(
                    x=part["condition"].tolist(),
                    y=part[metric].tolist(),
                    name=name,
                    legendgroup=name,
                    marker_color=color,
                    showlegend=col == 1,
                    error_y=_error_y(part, metric),
                ),
                row=1,
                col=col,
            )
    base = _baseline(df, "diverge_at")
    if base is not None:
        fig.add_hline(y=base, line=dict(color="black", dash="dot"), row=1, col=2)
    fig.update_xaxes(categoryorder="array", categoryarray=order, title_text="condition")
    fig.update_yaxes(title_text="share of documents", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="generated tokens", row=1, col=2)
    fig.update_layout(title=_title(title, df), template=TEMPLATE)
    return fig
