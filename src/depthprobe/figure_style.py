"""The one style of depthprobe's figures (:mod:`depthprobe.plots`): the template and palette, titles that
name the run (model, task, protocol, documents, limit), error bars from the paired 95% intervals, GQA
group colours, and :func:`save_figure` (self-contained HTML, PNG where kaleido finds Chromium)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

__all__ = [
    "PALETTE",
    "TEMPLATE",
    "as_frames",
    "baseline_value",
    "describe_run",
    "error_bars",
    "gqa_groups",
    "join_label",
    "n_documents",
    "require_columns",
    "run_title",
    "save_figure",
    "single_conditions",
    "titled",
    "with_truncation_note",
]

Frames = pd.DataFrame | Mapping[str, pd.DataFrame]
PALETTE = qualitative.Plotly
#: The one style of every depthprobe figure: plotly_white, the palette that colours GQA groups and
#: series, and thin error bars with short caps.
TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    colorway=PALETTE,
    font=dict(family="Helvetica, Arial, sans-serif", size=13),
    title=dict(x=0.02, xanchor="left", font=dict(size=16)),
    margin=dict(t=90),
    legend=dict(title=dict(text="")),
)
TEMPLATE.data.scatter = [go.Scatter(error_y=dict(thickness=1.2, width=3), marker=dict(size=7))]
TEMPLATE.data.bar = [go.Bar(error_y=dict(thickness=1.2, width=3, color="#333"))]
_PROTOCOLS = {"loglikelihood": "log-likelihood", "multiple_choice": "log-likelihood", "generate_until": "generation"}


def describe_run(
    *,
    model: str | Sequence[str],
    task: str | Sequence[str],
    protocol: str | Sequence[str] | None,
    n: int | None,
    limit: int | None,
) -> str:
    """One line naming what a figure shows: model, task, protocol, documents evaluated and the limit.

    A list joins its distinct values with " / "; a model path is shortened to its last component.
    """

    def text(value: str | Sequence[str] | None, short: bool = False) -> str:
        values = [value] if isinstance(value, str) or value is None else list(value)
        values = [Path(str(v)).name if short and v else v for v in values]
        values = list(dict.fromkeys(_PROTOCOLS.get(str(v), str(v)) for v in values if v))
        stem = os.path.commonprefix(values).rpartition("_")[0] if len(values) > 1 else ""
        if stem:  # one line fits a 700-pixel PNG: organism_{knowledge, closedbook}
            return f"{stem}_{{{', '.join(v[len(stem) + 1 :] for v in values)}}}"
        return " / ".join(values) or "?"

    docs = "n=?" if n is None else f"n={n}"
    return " · ".join(
        [text(model, True), text(task), text(protocol), docs, "no limit" if limit is None else f"limit {limit}"]
    )


def n_documents(frames: Frames) -> int | None:
    """Documents behind each point: the baseline's ``n_samples`` (the smallest across runs), or None."""
    counts = []
    for df in as_frames(frames).values():
        if "n_samples" in df.columns and "condition" in df.columns:
            base = df.loc[df["condition"] == "baseline", "n_samples"].dropna()
            if len(base):
                counts.append(int(base.iloc[0]))
    return min(counts) if counts else None


def run_title(
    headline: str,
    frames: Frames,
    *,
    model: str | Sequence[str],
    task: str | Sequence[str],
    limit: int | None,
    protocol: str | Sequence[str] | None = None,
) -> str:
    """``headline`` over a smaller line from :func:`describe_run` (n read from ``frames``, the protocol
    from the task when not given)."""
    if protocol is None:
        from depthprobe.tasks import get_task

        names = [task] if isinstance(task, str) else list(task)
        protocol = [get_task(t).output_type for t in names]
    about = describe_run(model=model, task=task, protocol=protocol, n=n_documents(frames), limit=limit)
    return titled(headline, about)


def titled(headline: str, about: str) -> str:
    """A figure title: ``headline`` over ``about`` (:func:`describe_run`) in small type."""
    return f"{headline}<br><sup>{about}</sup>"


def as_frames(frames: Frames) -> dict[str, pd.DataFrame]:
    return {"": frames} if isinstance(frames, pd.DataFrame) else dict(frames)


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")


def single_conditions(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of single-intervention conditions of ``kind``."""
    require_columns(df, ["kind", "layer", "n_interventions"], "results")
    return df[(df["kind"] == kind) & (df["n_interventions"] == 1)]


def baseline_value(df: pd.DataFrame, metric: str) -> float | None:
    base = df[df["condition"] == "baseline"]
    return float(base[metric].iloc[0]) if len(base) else None


def error_bars(rows: pd.DataFrame, metric: str) -> dict | None:
    """Plotly ``error_y`` of the paired 95% interval of ``delta_<metric>``, or None when the results have none."""
    low, high, delta = f"delta_{metric}_ci_low", f"delta_{metric}_ci_high", f"delta_{metric}"
    if not {low, high, delta} <= set(rows.columns):
        return None
    return dict(
        type="data",
        symmetric=False,
        array=(rows[high] - rows[delta]).tolist(),
        arrayminus=(rows[delta] - rows[low]).tolist(),
        visible=True,
    )


def with_truncation_note(title: str | None, frames: Frames) -> str | None:
    """``title``, noting left-truncated prompts when any result was computed on cut prompts."""
    counts = [
        int(df["n_truncated"].max())
        for df in as_frames(frames).values()
        if "n_truncated" in df.columns and df["n_truncated"].notna().any()
    ]
    if not counts or max(counts) == 0:
        return title
    note = f"({max(counts)} prompt(s) cut from the left to fit the model's context)"
    return f"{title} {note}" if title else note


def join_label(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def gqa_groups(rows: pd.DataFrame, group_size: int | None) -> pd.Series:
    """The GQA group of each single head or group condition (-1 for every other condition)."""
    group = pd.Series(-1, index=rows.index)
    if group_size is None or "index" not in rows.columns or "kind" not in rows.columns:
        return group
    single = rows["n_interventions"].eq(1) if "n_interventions" in rows.columns else True
    heads = rows["kind"].isin(["head", "head_weights", "mean_head"]) & single & rows["index"].notna()
    groups = rows["kind"].eq("group") & single & rows["index"].notna()
    group[heads] = rows.loc[heads, "index"].astype(int) // group_size
    group[groups] = rows.loc[groups, "index"].astype(int)
    return group


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
        print(
            f"depthprobe: PNG not written for {stem.name} ({type(err).__name__}: {reason[:160]}); "
            f"install kaleido and chromium for PNGs",
            file=sys.stderr,
        )
    return written
