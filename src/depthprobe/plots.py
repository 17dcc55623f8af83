"""The study's figures (plotly) from ``load_results`` DataFrames, and ``save_figure`` to HTML and PNG.

- :func:`layer_curves`: (a) a metric and (b) its delta vs baseline against the skipped layer,
  several metrics and/or runs (protocols) overlaid.
- :func:`head_attribution`: per-head metric and delta bars of one layer, coloured by GQA group.
- :func:`head_heatmap`: delta per (layer, head) when several layers were swept.
- :func:`o_proj_curves`: o_proj replacement schedules against the baseline.
- :func:`condition_bars`: the delta of every condition of any grid, one bar each.

Every function plots the DataFrame's values as they are (no smoothing or rescaling). Where the
results carry paired intervals (``delta_<metric>_ci_low/_ci_high``, see ``depthprobe.uncertainty``)
every point and bar has an error bar: the delta's 95% interval, drawn around the delta and,
shifted, around the metric itself (a bar that does not reach the baseline line marks a
difference distinguishable from zero). The heatmap shows the interval on hover.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = ["condition_bars", "head_attribution", "head_heatmap", "layer_curves", "o_proj_curves", "save_figure"]

Frames = pd.DataFrame | Mapping[str, pd.DataFrame]
_PALETTE = qualitative.Plotly


def _as_frames(frames: Frames) -> dict[str, pd.DataFrame]:
    return {"": frames} if isinstance(frames, pd.DataFrame) else dict(frames)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")


def _single(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of single-intervention conditions of ``kind``."""
    _require(df, ["kind", "layer", "n_interventions"], "results")
    return df[(df["kind"] == kind) & (df["n_interventions"] == 1)]


def _baseline(df: pd.DataFrame, metric: str) -> float | None:
    base = df[df["condition"] == "baseline"]
    return float(base[metric].iloc[0]) if len(base) else None


def _error_y(rows: pd.DataFrame, metric: str) -> dict | None:
    """Plotly ``error_y`` of the paired 95% interval of ``delta_<metric>``, or None when the results have none."""
    low, high, delta = f"delta_{metric}_ci_low", f"delta_{metric}_ci_high", f"delta_{metric}"
    if not {low, high, delta} <= set(rows.columns):
        return None
    return dict(type="data", symmetric=False, array=(rows[high] - rows[delta]).tolist(),
                arrayminus=(rows[delta] - rows[low]).tolist(), visible=True)


def _title(title: str | None, frames: Frames) -> str | None:
    """``title``, noting left-truncated prompts when any result was computed on cut prompts."""
    counts = [int(df["n_truncated"].max()) for df in _as_frames(frames).values()
              if "n_truncated" in df.columns and df["n_truncated"].notna().any()]
    if not counts or max(counts) == 0:
        return title
    note = f"({max(counts)} prompt(s) cut from the left to fit the model's context)"
    return f"{title} {note}" if title else note


def _label(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def layer_curves(
    frames: Frames, metrics: Sequence[str] = ("acc",), *, kind: str = "skip", title: str | None = None
) -> go.Figure:
    """(a) ``metric`` and (b) ``delta_<metric>`` against the layer of each ``kind`` condition.

    ``frames`` is one ``load_results`` DataFrame or ``{label: DataFrame}`` (e.g. the three MMLU
    protocols); one line per (label, metric). The baseline is a dotted line in (a).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("(a) accuracy", "(b) delta vs baseline"))
    i = 0
    for label, df in _as_frames(frames).items():
        rows = _single(df, kind).sort_values("layer")
        for metric in metrics:
            _require(df, [metric, f"delta_{metric}"], f"results {label!r}".strip())
            color = _PALETTE[i % len(_PALETTE)]
            i += 1
            name = _label(label, metric)
            err = _error_y(rows, metric)
            fig.add_trace(go.Scatter(x=rows["layer"].astype(int).tolist(), y=rows[metric].tolist(),
                                     mode="lines+markers", name=name, legendgroup=name,
                                     line=dict(color=color), error_y=err), row=1, col=1)
            fig.add_trace(go.Scatter(x=rows["layer"].astype(int).tolist(), y=rows[f"delta_{metric}"].tolist(),
                                     mode="lines+markers", name=name, legendgroup=name, showlegend=False,
                                     line=dict(color=color), error_y=err), row=1, col=2)
            base = _baseline(df, metric)
            if base is not None:
                fig.add_hline(y=base, line=dict(color=color, dash="dot"), row=1, col=1)
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=1, col=2)
    fig.update_xaxes(title_text="skipped layer")
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_yaxes(title_text="delta", row=1, col=2)
    fig.update_layout(title=_title(title, frames), template="plotly_white")
    return fig


def head_attribution(
    df: pd.DataFrame, layer: int, *, metric: str = "acc", group_size: int = 1, kind: str = "head",
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
        fig.add_trace(go.Bar(x=x, y=part[metric].tolist(), name=f"group {g}", legendgroup=f"g{g}",
                             marker_color=color, error_y=err), row=1, col=1)
        fig.add_trace(go.Bar(x=x, y=part[f"delta_{metric}"].tolist(), name=f"group {g}", legendgroup=f"g{g}",
                             marker_color=color, showlegend=False, error_y=err), row=1, col=2)
    base = _baseline(df, metric)
    if base is not None:
        fig.add_hline(y=base, line=dict(color="black", dash="dot"), row=1, col=1)
    fig.update_xaxes(title_text=f"head of layer {layer}", dtick=1)
    fig.update_layout(title=_title(title, df), template="plotly_white", barmode="group")
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
    table = rows.assign(layer=rows["layer"].astype(int), index=rows["index"].astype(int)).pivot(
        index="layer", columns="index", values=column).sort_index().sort_index(axis=1)
    hover = None
    if _error_y(rows, metric) is not None:
        lo, hi = (rows.assign(layer=rows["layer"].astype(int), index=rows["index"].astype(int)).pivot(
            index="layer", columns="index", values=f"delta_{metric}_ci_{end}").reindex_like(table) for end in ("low", "high"))
        hover = [[f"95% CI [{a:+.3f}, {b:+.3f}]" for a, b in zip(ra, rb)] for ra, rb in zip(lo.values, hi.values)]
    fig = go.Figure(go.Heatmap(z=table.values.tolist(), x=table.columns.tolist(), y=table.index.tolist(),
                               colorscale="RdBu", zmid=0 if delta else None, colorbar=dict(title=column),
                               text=hover, hovertemplate=None if hover is None else
                               "layer %{y} head %{x}: %{z:.3f} %{text}<extra></extra>"))
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer", dtick=1)
    fig.update_layout(title=_title(title, df), template="plotly_white")
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
        fig.add_trace(go.Scatter(x=x, y=rows[metric].tolist(), mode="lines+markers", name=name,
                                 line=dict(color=_PALETTE[i % len(_PALETTE)]), error_y=_error_y(rows, metric)))
        base = base if base is not None else _baseline(df, metric)
    if base is not None and xs:
        fig.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[base, base], mode="lines", name="baseline",
                                 line=dict(color="black", dash="dot")))
    fig.update_xaxes(title_text="layer (per-layer: patched alone; reverse: first of k..L-1; accumulative: last of 0..k)",
                     tickmode="linear", dtick=1)
    fig.update_yaxes(title_text=metric)
    fig.update_layout(title=_title(title, frames), template="plotly_white")
    return fig


def condition_bars(df: pd.DataFrame, *, metric: str = "acc", title: str | None = None) -> go.Figure:
    """``delta_<metric>`` of every condition but the baseline, one bar each in the results' order."""
    _require(df, ["condition", f"delta_{metric}"], "results")
    rows = df[df["condition"] != "baseline"]
    if rows.empty:
        raise ValueError("no conditions besides the baseline in the results")
    fig = go.Figure(go.Bar(x=rows["condition"].tolist(), y=rows[f"delta_{metric}"].tolist(), name=f"delta {metric}",
                           marker_color=_PALETTE[0], error_y=_error_y(rows, metric)))
    fig.update_xaxes(title_text="condition")
    fig.update_yaxes(title_text=f"delta {metric}")
    fig.update_layout(title=_title(title, df), template="plotly_white")
    return fig


def save_figure(fig: go.Figure, path_stem: str | os.PathLike[str], *, png: bool = True) -> list[Path]:
    """Write ``<stem>.html`` (self-contained) and, with ``png``, ``<stem>.png`` when kaleido finds a browser.

    Without a usable Chrome/Chromium the PNG is skipped with one warning line on stderr.
    Returns the files written.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    written = [html]
    if not png:
        return written
    png = stem.with_suffix(".png")
    try:
        fig.write_image(png, scale=2)
        written.append(png)
    except Exception as err:  # kaleido missing, no browser, or the browser failed: HTML is enough
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"depthprobe: PNG not written for {stem.name} ({type(err).__name__}: {reason[:160]}); "
              f"install kaleido and chromium for PNGs", file=sys.stderr)
    return written
