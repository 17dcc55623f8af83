"""``run_sweep(..., prescreen=Prescreen(...))``: attribute every condition, exact-ablate the chosen ones, and
report what the screen got right. The sweep owns the screen; :mod:`depthprobe.attribution` does the estimating."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from depthprobe.attribution import Prescreen, attribute, exact_effects, recall, select
from depthprobe.engine.grids import Condition, condition_digest, condition_id
from depthprobe.identity import ResolvedModel
from depthprobe.interventions import Intervention

__all__ = ["PRESCREEN_FILE", "prescreen_report", "screen_conditions"]


PRESCREEN_FILE = "prescreen.json"


def _settings(prescreen: Prescreen) -> dict[str, Any]:
    return {
        "top_k": prescreen.top_k,
        "random_k": prescreen.random_k,
        "method": prescreen.method,
        "metric": prescreen.metric,
        "steps": prescreen.steps,
        "seed": prescreen.seed,
    }


def screen_conditions(
    model: torch.nn.Module | ResolvedModel,
    task: Any,
    conditions: Sequence[Condition],
    prescreen: Prescreen,
    *,
    run_dir: Any,
    limit: int | None,
    num_fewshot: int | None,
    data_dir: Any,
    batch_size: int,
) -> tuple[list[list[Intervention]], dict[str, dict[str, Any]]]:
    """Attribute every non-baseline condition, keep the baseline plus the selected ones, and their result-row extras.

    The extras of a selected condition not yet on disk: ``estimate``, ``estimate_abs``,
    ``screen`` (``top``/``random``), ``screen_metric`` and the exact delta of that metric
    (``exact``, ``exact_abs``, ``exact_stderr``, measured through the sweep engine). The whole
    estimate table goes to ``<run_dir>/prescreen.json``; a directory screened with other
    settings is refused.
    """
    path = Path(run_dir.path) / PRESCREEN_FILE
    settings = _settings(prescreen)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))["settings"]
        if old != settings:
            raise ValueError(
                f"{run_dir.path} was pre-screened with {old}, not {settings}; use another output directory"
            )
    candidates = [list(c) for c in conditions if len(c)]
    options = dict(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir, batch_size=batch_size)
    est = attribute(
        model, task, candidates, method=prescreen.method, metric=prescreen.metric, steps=prescreen.steps, **options
    )
    chosen = select(est, prescreen)
    selected = [c for c in candidates if condition_id(c) in chosen]
    todo = [c for c in selected if not run_dir.done(condition_id(c), condition_digest(c))]
    exact = (
        exact_effects(model, task, todo, metric=est.attrs["metric"], **options).set_index("condition")
        if todo
        else pd.DataFrame()
    )
    by_id = est.set_index("condition")
    extras: dict[str, dict[str, Any]] = {}
    for cond in todo:
        cid = condition_id(cond)
        extras[cid] = {
            "estimate": float(by_id.loc[cid, "estimate"]),
            "estimate_abs": float(by_id.loc[cid, "estimate_abs"]),
            "screen": chosen[cid],
            "screen_metric": est.attrs["metric"],
            **{k: float(exact.loc[cid, k]) for k in ("exact", "exact_abs", "exact_stderr")},
        }
    table = est.assign(screen=est["condition"].map(chosen))
    record = {
        "settings": settings,
        "metric": est.attrs["metric"],
        "n_candidates": len(candidates),
        "forward_equivalents": est.attrs["forward_equivalents"],
        "estimates": json.loads(table.to_json(orient="records")),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return [[]] + selected, extras


def prescreen_report(df: pd.DataFrame, prescreen: Prescreen, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Top-k recall of the screen, computed from the exactly measured rows of ``df`` (a ``load_results`` table).

    ``recall``: on the screen's metric (``exact_abs``); ``recall_<m>``: on ``|delta_<m>|`` of each
    task metric in ``metrics``. Also how many conditions were measured, of each kind.
    """
    if "screen" not in df.columns:
        raise ValueError("these results have no pre-screened rows (no 'screen' column); run run_sweep with prescreen=")
    rows = df[df["screen"].isin(["top", "random"])]
    k = prescreen.top_k
    report: dict[str, Any] = {
        "top_k": k,
        "random_k": prescreen.random_k,
        "n_measured": len(rows),
        "n_top": int((rows["screen"] == "top").sum()),
        "n_random": int((rows["screen"] == "random").sum()),
        "recall": recall(rows, k, exact="exact_abs"),
    }
    for m in metrics:
        if f"delta_{m}" in rows.columns:
            report[f"recall_{m}"] = recall(rows.assign(_abs=rows[f"delta_{m}"].abs()), k, exact="_abs")
    return report
