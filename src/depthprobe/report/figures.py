"""The figure of each sweep, chosen by its grid, drawn by :mod:`depthprobe.plots` in its one style."""

from __future__ import annotations

import plotly.graph_objects as go

from depthprobe import plots
from depthprobe.report.checks import unit_kinds
from depthprobe.report.scan import Sweep

__all__ = ["divergence_figure", "sweep_figure", "sweep_title"]


def sweep_title(sweep: Sweep, headline: str) -> str:
    """``headline`` over the run's model, task, protocol, documents and limit."""
    about = plots.describe_run(
        model=sweep.model,
        task=sweep.task,
        protocol=sweep.manifest.get("protocol"),
        n=sweep.n_documents,
        limit=sweep.limit,
    )
    shots = "" if sweep.shots is None else f", {sweep.shots}-shot"
    think = "" if sweep.thinking is None else (", thinking on" if sweep.thinking else ", thinking off")
    return plots.titled(f"{headline}{shots}{think}", about)


def sweep_figure(sweep: Sweep) -> go.Figure:
    """Layer curves for a layer sweep, a layer's head bars coloured by GQA group, the layer x head
    heatmap over several layers, or one bar per condition for any other grid (ValueError: nothing to draw)."""
    df, metric = sweep.results, sweep.metric
    if df is None or metric is None:
        raise ValueError("no results to draw")
    rows = df[df["condition"] != "baseline"]
    if rows.empty:
        raise ValueError("only the baseline is done: no condition to draw")
    title = sweep_title(sweep, f"{sweep.grid}: {metric}")
    group_size = sweep.dims.group_size if sweep.dims is not None else None
    if sweep.grid == "layers":
        return plots.layer_curves(df, [metric], title=title)
    units = unit_kinds()
    kinds = set(rows["kind"])
    if len(kinds) == 1 and next(iter(kinds)) in units and (rows["n_interventions"] == 1).all():
        kind = next(iter(kinds))
        layers = sorted(int(v) for v in rows["layer"].dropna().unique())
        if len(layers) > 1:
            return plots.head_heatmap(df, metric=metric, kind=kind, title=title)
        if units[kind][1] == "group" or group_size is not None:  # without the model's config, no GQA groups
            size = 1 if units[kind][1] == "group" else int(group_size or 1)
            return plots.head_attribution(df, layers[0], metric=metric, group_size=size, kind=kind, title=title)
    return plots.condition_bars(df, metric=metric, group_size=group_size, title=title)


def divergence_figure(sweep: Sweep) -> go.Figure:
    """How much of the baseline's generation each condition keeps (generation sweeps whose results hold
    ``identical_to_baseline`` and ``diverge_at``; ValueError otherwise)."""
    if sweep.results is None:
        raise ValueError("no results to draw")
    size = sweep.dims.group_size if sweep.dims is not None else None
    return plots.divergence(
        sweep.results,
        group_size=size,
        title=sweep_title(sweep, f"{sweep.grid}: how much of the baseline's generation survives"),
    )
