"""The index (one row per run directory, filterable and sortable) and one page per sweep."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from depthprobe.report.figures import divergence_figure, sweep_figure
from depthprobe.report.html import Cell, count, esc, figure_html, fmt, fmt_ci, num, page, table_html
from depthprobe.report.scan import Sweep
from depthprobe.results import load_results
from depthprobe.uncertainty import sample_column, significant

__all__ = ["index_page", "sweep_page"]

FILTERS = ("model", "task", "protocol", "grid", "shots", "status")


def _shots(sweep: Sweep) -> str:
    return "" if sweep.shots is None else str(sweep.shots)


def _deltas_cell(sweep: Sweep, k: int = 3) -> Cell:
    rows = sweep.distinguishable()
    if sweep.results is None or rows.empty:
        text = "none" if sweep.has_intervals else ""
        return Cell(f'<span class="muted">{text}</span>', value=0 if sweep.has_intervals else "")
    m = sweep.metric
    parts = [
        f'{esc(r["condition"])} <span class="sig">{fmt(r[f"delta_{m}"], sign=True)}</span> '
        f'<span class="muted">{fmt_ci(r[f"delta_{m}_ci_low"], r[f"delta_{m}_ci_high"])}</span>'
        for _, r in rows.head(k).iterrows()
    ]
    more = f'<br><span class="muted">+{len(rows) - k} more</span>' if len(rows) > k else ""
    return Cell("<br>".join(parts) + more, value=float(rows[f"delta_{m}"].abs().max()), cls="nowrap")


def _notes_cell(sweep: Sweep) -> Cell:
    parts = [f'<span class="problem">{esc(sweep.problem)}</span>'] if sweep.problem else []
    parts += [f'<span class="warn">{esc(w)}</span>' for w in sweep.warnings]
    return Cell("<br>".join(parts), value=len(parts), cls="notes")


def index_page(sweeps: Sequence[Sweep], roots: Sequence[str], *, study: bool) -> str:
    """The index: filters, then one row per run directory with its page link (or what is wrong with it)."""
    values = {key: sorted({str(_attr(s, key)) for s in sweeps} - {""}, key=_natural) for key in FILTERS}
    selects = "".join(
        f'<label>{key}<select data-filter="{key}"><option value="">all</option>'
        + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values[key])
        + "</select></label>"
        for key in FILTERS
    )
    filters = (
        f'<div class="filters">{selects}<label>search<input id="search" type="search" '
        f'placeholder="any text"></label><span id="shown" class="muted"></span></div>'
    )
    headers = [
        ("model", "text"),
        ("task", "text"),
        ("protocol", "text"),
        ("shots", "number"),
        ("grid", "text"),
        ("status", "text"),
        ("n docs", "number"),
        ("metric", "text"),
        ("baseline", "number"),
        ("largest deltas distinguishable at 95%", "number"),
        ("warnings", "number"),
        ("sweep", "text"),
    ]
    rows = []
    for s in sweeps:
        attrs = {"data-" + key: str(_attr(s, key)) for key in FILTERS}
        attrs["class"] = "status-" + s.status.replace(" ", "-")
        task = s.task + ("" if s.thinking is None else (" (thinking)" if s.thinking else " (no thinking)"))
        link = f'<a href="{esc(s.page)}">{esc(s.label)}</a>' if s.page else f'<span class="muted">{esc(s.label)}</span>'
        rows.append(
            (
                attrs,
                [
                    esc(s.model),
                    esc(task),
                    esc(s.protocol if s.manifest else ""),
                    Cell(esc(_shots(s)), value=s.shots if s.shots is not None else ""),
                    esc(s.grid if s.results is not None else ""),
                    esc(s.status),
                    count(s.n_documents),
                    esc(s.metric or ""),
                    num(s.baseline),
                    _deltas_cell(s),
                    _notes_cell(s),
                    Cell(link, cls="label"),
                ],
            )
        )
    bad = sum(s.status != "ok" for s in sweeps)
    summary = (
        f"<p>{len(sweeps)} run director{'y' if len(sweeps) == 1 else 'ies'} under "
        f"{', '.join(f'<code>{esc(r)}</code>' for r in roots)}; {bad} with a problem. "
        f"A delta is distinguishable at 95% when its paired t interval over the documents excludes 0. "
        f"Report written {esc(_dt.datetime.now().isoformat(timespec='seconds'))}.</p>"
    )
    study_link = (
        '<p><a href="study.html">Study views</a>: the paper\'s comparisons across these sweeps.</p>' if study else ""
    )
    body = summary + study_link + filters + table_html(headers, rows, table_id="sweeps")
    nav = [("index", "index.html")] + ([("study views", "study.html")] if study else [])
    return page("depthprobe report", body, root=".", nav=nav)


def _natural(text: str) -> tuple[int, int, str]:
    """Sort key: whole numbers by value (shots 0, 1, 4, 8, 25), then text."""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _attr(s: Sweep, key: str) -> Any:
    if key == "shots":
        return _shots(s)
    if key in ("model", "task", "protocol") and not s.manifest:
        return ""
    if key == "grid" and s.results is None:
        return ""
    return getattr(s, key)


# --- the sweep page ------------------------------------------------------------------------


def _conditions_table(s: Sweep, divergence: pd.DataFrame | None) -> str:
    df, m = s.results, str(s.metric)
    assert df is not None
    sig = significant(df, m) if s.has_intervals else pd.Series(False, index=df.index)
    headers = [
        ("condition", "text"),
        ("kind", "text"),
        ("layer", "number"),
        ("index", "number"),
        (m, "number"),
        (f"delta {m}", "number"),
        ("stderr", "number"),
        ("95% interval", None),
        ("sig.", "text"),
    ]
    extra = [c for c in ("identical_to_baseline", "diverge_at") if c in df.columns]
    headers += [({"diverge_at": "mean diverge_at"}.get(c, c.replace("_", " ")), "number") for c in extra]
    div_cols = [] if divergence is None else list(divergence.columns)
    headers += [(c, "number") for c in div_cols]
    headers += [("n", "number"), ("truncated", "number")]
    rows = []
    for i, r in df.iterrows():
        cells: list[Cell | str] = [
            esc(r["condition"]),
            esc(r.get("kind", "")),
            count(r.get("layer")),
            count(r.get("index")),
            num(r[m]),
            num(r.get(f"delta_{m}"), sign=True),
            num(r.get(f"delta_{m}_stderr")),
            Cell(esc(fmt_ci(r.get(f"delta_{m}_ci_low"), r.get(f"delta_{m}_ci_high"))), cls="nowrap"),
            Cell(
                '<span class="sig" title="the paired 95% interval excludes 0">*</span>' if bool(sig.loc[i]) else "",
                value="*" if bool(sig.loc[i]) else "",
            ),
        ]
        cells += [num(r.get(c), digits=1 if c == "diverge_at" else 3) for c in extra]
        cells += [
            num(divergence.loc[r["condition"], c], digits=1 if "diverge" in c else 3)
            if divergence is not None and r["condition"] in divergence.index
            else num(None)
            for c in div_cols
        ]
        cells += [count(r.get("n_samples")), count(r.get("n_truncated"))]
        rows.append(({"data-condition": str(r["condition"])}, cells))
    return table_html(headers, rows, table_id="conditions")


def _all_metrics_table(s: Sweep) -> str:
    df = s.results
    assert df is not None
    skip = ("delta_", "n_", "wall_s", "layer", "index", "kind", "condition", "interventions", "screen", "estimate")
    metrics = [c for c in df.columns if not str(c).startswith(skip) and pd.api.types.is_numeric_dtype(df[c])]
    rows = [({}, [esc(r["condition"])] + [num(r[c]) for c in metrics]) for _, r in df.iterrows()]
    return table_html([("condition", "text")] + [(c, "number") for c in metrics], rows)


def _divergence(samples: pd.DataFrame | None, results: pd.DataFrame) -> pd.DataFrame | None:
    """Per condition, from the samples: the median first differing token, and the share of generations identical
    to the baseline's where the results do not hold it as a metric already."""
    if samples is None or not {"identical_to_baseline", "diverge_at"} & set(samples.columns):
        return None
    out = {}
    g = samples.groupby("condition")
    if "identical_to_baseline" in samples.columns and "identical_to_baseline" not in results.columns:
        out["identical generations"] = g["identical_to_baseline"].apply(
            lambda v: pd.to_numeric(v, errors="coerce").mean()
        )
    if "diverge_at" in samples.columns:
        out["median diverge_at"] = g["diverge_at"].apply(lambda v: pd.to_numeric(v, errors="coerce").median())
    return pd.DataFrame(out)


def _marked(text: str, other: str) -> str:
    """``text`` escaped, with the part after its common prefix with ``other`` highlighted."""
    k = 0
    while k < min(len(text), len(other)) and text[k] == other[k]:
        k += 1
    return esc(text[:k]) + (f"<mark>{esc(text[k:])}</mark>" if k < len(text) else "")


def _examples(s: Sweep, samples: pd.DataFrame, n_conditions: int = 3, n_docs: int = 2) -> str:
    """Baseline beside condition for a few documents of the conditions with the largest deltas."""
    m = str(s.metric)
    df = s.results
    assert df is not None
    if "generation" not in samples.columns or "doc_id" not in samples.columns:
        return "<p class='muted'>The samples hold no generations.</p>"
    col = sample_column(m, samples.columns)
    base = samples[samples["condition"] == "baseline"].drop_duplicates("doc_id").set_index("doc_id")
    if base.empty:
        return "<p class='muted'>No baseline generations to compare with.</p>"
    ranked = df[df["condition"] != "baseline"].copy()
    ranked["_sig"] = significant(ranked, m) if s.has_intervals else False
    ranked["_abs"] = ranked[f"delta_{m}"].abs()
    ranked = ranked.sort_values(["_sig", "_abs"], ascending=False).head(n_conditions)
    blocks = []
    for _, r in ranked.iterrows():
        cond = samples[samples["condition"] == r["condition"]].drop_duplicates("doc_id").set_index("doc_id")
        docs = [
            d for d in cond.index if d in base.index and str(cond.at[d, "generation"]) != str(base.at[d, "generation"])
        ]
        if col is not None:
            docs.sort(key=lambda d: bool(cond.at[d, col]) == bool(base.at[d, col]))  # changed verdicts first
        rows = []
        for d in docs[:n_docs]:
            b, c = str(base.at[d, "generation"]), str(cond.at[d, "generation"])
            where = f"<br>diverge_at {esc(cond.at[d, 'diverge_at'])}" if "diverge_at" in cond.columns else ""
            prompt = str(base.at[d, "prompt"]) if "prompt" in base.columns else ""
            rows.append(
                (
                    {},
                    [
                        Cell(f"{d}{where}"),
                        esc(base.at[d, "target"] if "target" in base.columns else ""),
                        Cell(f'<div class="gen">{_marked(b, c)}</div>{_verdict(base, d, col)}'),
                        Cell(f'<div class="gen">{_marked(c, b)}</div>{_verdict(cond, d, col)}'),
                        Cell(
                            f'<details><summary>prompt</summary><div class="gen">{esc(prompt[-1500:])}</div></details>'
                        ),
                    ],
                )
            )
        head = (
            f"<h3>{esc(r['condition'])}: delta {fmt(r[f'delta_{m}'], sign=True)} "
            f"{esc(fmt_ci(r.get(f'delta_{m}_ci_low'), r.get(f'delta_{m}_ci_high')))}</h3>"
        )
        if not rows:
            blocks.append(head + "<p class='muted'>Every generation equals the baseline's.</p>")
            continue
        blocks.append(
            head
            + table_html(
                [("doc", None), ("target", None), ("baseline", None), (r["condition"], None), ("", None)],
                rows,
                cls="examples",
            )
        )
    return "".join(blocks) or "<p class='muted'>No condition besides the baseline.</p>"


def _verdict(samples: pd.DataFrame, doc: int, column: str | None) -> str:
    """A tick for a document scored correct, a cross otherwise (nothing without a score column)."""
    return "" if column is None else (" ✓" if bool(samples.at[doc, column]) else " ✗")


def _stamp(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _provenance(s: Sweep) -> str:
    mf, df = s.manifest, s.results
    files = [(p, s.path / "conditions" / p) for p in sorted(x.name for x in (s.path / "conditions").glob("[!.]*.json"))]
    times = [f.stat().st_mtime for _, f in files if f.exists()]
    compute = float(df["wall_s"].sum()) if df is not None and "wall_s" in df.columns else None
    data = mf.get("data") or {}
    items = [
        ("run directory", str(s.path.resolve())),
        ("model", mf.get("model")),
        ("revision", mf.get("revision")),
        ("dtype", mf.get("dtype")),
        ("device", mf.get("device")),
        ("attention", mf.get("attn_implementation")),
        ("task", mf.get("task")),
        ("task options", json.dumps(mf.get("task_options") or {}, sort_keys=True)),
        ("protocol", mf.get("protocol")),
        ("shots", mf.get("num_fewshot")),
        ("seed", mf.get("seed")),
        ("limit", mf.get("limit")),
        ("max_gen_toks", mf.get("max_gen_toks")),
        ("documents digest", data.get("documents")),
        ("data files", ", ".join(f"{k}: {v}" for k, v in (data.get("files") or {}).items()) or "none (generated)"),
        ("data_dir", mf.get("data_dir")),
        ("versions", ", ".join(f"{k} {v}" for k, v in (mf.get("versions") or {}).items())),
        ("depthprobe commit", mf.get("git_commit")),
        ("identity digest", mf.get("identity_digest")),
        ("conditions", f"{len(files)} finished"),
        ("compute time", None if compute is None else f"{compute:.1f} s (sum over conditions)"),
        ("written", f"{_stamp(min(times))} .. {_stamp(max(times))}" if times else None),
    ]
    return (
        '<dl class="prov">'
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc('—' if v is None else v)}</dd>" for k, v in items)
        + "</dl>"
    )


def sweep_page(s: Sweep, *, in_study: Sequence[tuple[str, str]] = ()) -> str:
    """A sweep's page: notes, figure, conditions table, divergence and examples (generation), provenance."""
    body = []
    notes = ([f'<p class="problem">{esc(s.problem)}</p>'] if s.problem else []) + [
        f'<p class="warn">{esc(w)}</p>' for w in s.warnings
    ]
    body += notes
    body.append(
        f"<p>{esc(s.model)} · {esc(s.task)} · {esc(s.protocol)} · shots {esc(_shots(s) or '—')} · "
        f"grid <b>{esc(s.grid)}</b> · {esc(s.n_documents)} documents · metric <b>{esc(s.metric)}</b> · "
        f"baseline {esc(fmt(s.baseline))}</p>"
    )
    if in_study:
        body.append(
            "<p>In the study views: "
            + ", ".join(f'<a href="../study.html#{esc(a)}">{esc(t)}</a>' for t, a in in_study)
            + "</p>"
        )
    try:
        body.append(figure_html(sweep_figure(s), "figure"))
    except ValueError as err:
        body.append(f'<p class="muted">No figure: {esc(err)}</p>')
    samples = None
    generation = s.manifest.get("protocol") == "generate_until"
    if generation:
        try:
            samples = load_results(s.path, samples=True)
        except Exception as err:  # the results loaded a moment ago; a file changing now is not fatal
            body.append(f'<p class="problem">samples unreadable: {esc(err)}</p>')
    if samples is not None:
        try:
            body.append(figure_html(divergence_figure(s), "divergence"))
        except ValueError:  # a run made before generations were compared with the baseline's
            pass
    body.append("<h2>Conditions</h2>" + _conditions_table(s, _divergence(samples, s.results)))
    body.append('<p class="muted">* the paired 95% t interval of the delta excludes 0.</p>')
    body.append(f"<details><summary>every metric</summary>{_all_metrics_table(s)}</details>")
    if generation and samples is not None:
        body.append(
            "<h2>Example generations</h2><p class='muted'>Documents whose generation changed under the "
            "conditions with the largest deltas (distinguishable ones first); the highlighted text starts "
            "where the two generations part.</p>" + _examples(s, samples)
        )
    body.append("<h2>Provenance</h2>" + _provenance(s))
    nav = [("index", "../index.html")] + ([("study views", "../study.html")] if in_study else [])
    return page(f"{s.label}", "".join(body), root="..", nav=nav, figures=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
